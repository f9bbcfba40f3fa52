// The per-thread loops of the CPU near-zero counts, compiled once per CPU instruction set
// (near_zero_isa.cpp, see CMakeLists.txt); near_zero_cpu.cpp runs the set that relu_count uses.
#pragma once
#include <cstdint>

namespace pozfast {

// One thread's share of a call: elements [begin, end) of the flat [outer, channels, inner] buffers.
struct NearZeroSlice {
  const void* x;
  void* y;  // nullptr: count only
  int64_t begin, end, channels, inner;
  const uint8_t* mask;
  int64_t repeat;
  int num_thresholds;
  const int64_t* keys;
  int64_t* by_channel;    // rows(): [num_thresholds, channels], added to
  uint32_t* by_position;  // positions(): [num_thresholds, counter_stride], added to (channels * inner used)
  int64_t counter_stride;
};
using NearZeroSliceFn = void (*)(const NearZeroSlice&);

// Indexed by DType. rows() counts whole rows of inner elements, one channel each; positions() counts by
// position within a [channels, inner] block, for rows too short for that (uint32 counters: at most
// 2^32 - 1 blocks).
struct NearZeroKernels {
  NearZeroSliceFn rows[4];
  NearZeroSliceFn positions[4];
};

extern const NearZeroKernels near_zero_kernels_default;
extern const NearZeroKernels near_zero_kernels_native;
extern const NearZeroKernels near_zero_kernels_avx2;
extern const NearZeroKernels near_zero_kernels_avx512;

}  // namespace pozfast
