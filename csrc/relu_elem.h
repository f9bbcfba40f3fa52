// The element rule of relu_count, shared by the CPU and CUDA kernels.
//
// torch.relu(x) is `x < 0 ? 0 : x`: NaN (of either sign) and -0.0 pass through unchanged, and y is a
// zero exactly when y == 0 (-0.0 included). float and double use that compare directly. The 16-bit
// types work on their bit patterns (no portable half compare on CPUs): x < 0 exactly when the sign
// bit is set and 0 < |x| <= inf.
#pragma once
#include <cstdint>

#include "host_device.h"

namespace pozfast {

template <typename T>
struct ReluFloat {
  using Elem = T;
  static POZFAST_HD POZFAST_FORCEINLINE T relu(T x) { return x < T(0) ? T(0) : x; }
  static POZFAST_HD POZFAST_FORCEINLINE bool is_zero(T y) { return y == T(0); }
};

template <uint16_t kInf>
struct ReluHalfBits {
  using Elem = uint16_t;
  static POZFAST_HD POZFAST_FORCEINLINE uint16_t relu(uint16_t b) {
    const uint16_t mag = b & 0x7fffu;
    const bool negative = (b & 0x8000u) && static_cast<uint16_t>(mag - 1u) < kInf;  // 0 < mag <= inf
    return negative ? uint16_t(0) : b;
  }
  static POZFAST_HD POZFAST_FORCEINLINE bool is_zero(uint16_t y) { return (y & 0x7fffu) == 0; }
};

using ReluF32 = ReluFloat<float>;
using ReluF64 = ReluFloat<double>;
using ReluF16 = ReluHalfBits<0x7c00u>;
using ReluBF16 = ReluHalfBits<0x7f80u>;

}  // namespace pozfast
