// The per-thread loops of the CPU relu_count, compiled once per CPU instruction set (relu_count_isa.cpp,
// see CMakeLists.txt); relu_count_cpu.cpp runs one set, chosen at run time.
#pragma once
#include <cstdint>

namespace pozfast {

// One thread's share of a call: elements [begin, end) of the flat [outer, channels, inner] buffers.
struct ReluSlice {
  const void* x;
  void* y;
  int64_t begin, end, channels, inner;
  int64_t* by_channel;    // rows(): zeros per channel, added to
  uint32_t* by_position;  // positions(): zeros per position of a [channels, inner] block, added to
};
using ReluSliceFn = void (*)(const ReluSlice&);

// Indexed by DType. rows() counts whole rows of inner elements, one channel each; positions() counts by
// position within a block, for rows too short for that (uint32 counters: at most 2^32 - 1 blocks).
struct ReluKernels {
  ReluSliceFn rows[4];
  ReluSliceFn positions[4];
};

// One set per compiled instruction set; each build defines some of them (relu_count_cpu.cpp lists them).
extern const ReluKernels relu_kernels_default;
extern const ReluKernels relu_kernels_native;
extern const ReluKernels relu_kernels_avx2;
extern const ReluKernels relu_kernels_avx512;

}  // namespace pozfast
