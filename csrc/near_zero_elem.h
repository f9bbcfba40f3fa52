// The element rule of the near-zero counts, shared by the CPU and CUDA kernels.
//
// |a| <= tau is decided on bit patterns: with the sign bit cleared, the magnitudes of floats that are not
// NaN are ordered as their bit patterns read as integers, and every NaN lies above +inf. So an element
// counts exactly when (bits & ~sign) <= key, where key is the bit pattern of tau rounded to the element
// type: NaN never counts, -0.0 counts at tau = 0, inf only when tau itself rounds to inf (as in torch).
// Keys are compared as signed integers of the element's width (both sides are non-negative), which
// every vector instruction set compares natively.
#pragma once
#include <cstdint>
#include <cstring>

#include "host_device.h"
#include "relu_elem.h"

namespace pozfast {

template <typename Relu, typename KeyT, uint64_t kInfBits>
struct NearZeroElem {
  using Elem = typename Relu::Elem;
  using Key = KeyT;
  static_assert(sizeof(Elem) == sizeof(Key), "a key is an element's bit pattern");
  static constexpr Key kMagnitude = static_cast<Key>(~(uint64_t(1) << (8 * sizeof(Key) - 1)));
  static constexpr Key kInf = static_cast<Key>(kInfBits);  // the bit pattern of +inf

  static POZFAST_HD POZFAST_FORCEINLINE Key key(Elem v) {
    Key bits;
    memcpy(&bits, &v, sizeof bits);
    return static_cast<Key>(bits & kMagnitude);
  }
  static POZFAST_HD POZFAST_FORCEINLINE Elem relu(Elem v) { return Relu::relu(v); }
  // The CUDA rules (relu_cuda.h) take the sign rule of a zero.
  static POZFAST_HD POZFAST_FORCEINLINE Elem relu(Elem v, bool clear) { return Relu::relu(v, clear); }
};

using NearZeroF32 = NearZeroElem<ReluF32, int32_t, 0x7f800000u>;
using NearZeroF64 = NearZeroElem<ReluF64, int64_t, 0x7ff0000000000000u>;
using NearZeroF16 = NearZeroElem<ReluF16, int16_t, 0x7c00u>;
using NearZeroBF16 = NearZeroElem<ReluBF16, int16_t, 0x7f80u>;

}  // namespace pozfast
