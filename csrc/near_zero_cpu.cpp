// CPU (OpenMP) near-zero counts: the entry point. One pass over x; each thread takes a contiguous slice of
// the flat buffer and counts into thread-local arrays that are added to the caller's counts at the end,
// so there are no atomics and no temporaries of x's size. The per-thread loops (near_zero_isa.cpp) come
// from the instruction-set build that relu_count uses (cpu_isa()).
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_parallel.h"
#include "near_zero.h"
#include "near_zero_isa.h"

namespace pozfast {
namespace {

// Rows at least this long are counted row by row; shorter ones by position within a [channels, inner] block.
constexpr int64_t kRowModeMinInner = 64;
// Largest thresholds * channels * inner that gets per-position thread-local counters (16 MiB a thread).
constexpr int64_t kMaxCounterPositions = int64_t(1) << 22;

// Per-position counters of one threshold take a whole number of cache lines plus one, so that the
// thresholds' arrays do not all map to the same cache sets (blocks are often multiples of 4 KiB).
int64_t counter_stride(int64_t block) {
  const int64_t line = kCacheLine / int64_t(sizeof(uint32_t));
  return (block + line - 1) / line * line + line;
}

const NearZeroKernels& kernels() {
  const char* isa = cpu_isa();
#if defined(POZFAST_ISA_AVX512)
  if (std::strcmp(isa, "avx512") == 0) return near_zero_kernels_avx512;
#endif
#if defined(POZFAST_ISA_AVX2)
  if (std::strcmp(isa, "avx2") == 0) return near_zero_kernels_avx2;
#endif
#if defined(POZFAST_ISA_NATIVE)
  return near_zero_kernels_native;
#else
  (void)isa;
  return near_zero_kernels_default;
#endif
}

void check(const NearZeroArgs& a) {
  if (a.num_thresholds < 1 || a.num_thresholds > kMaxThresholds)
    throw std::invalid_argument("near_zero_count: 1 to " + std::to_string(kMaxThresholds) + " thresholds, got " +
                                std::to_string(a.num_thresholds));
  if (a.outer < 0 || a.channels < 0 || a.inner < 0)
    throw std::invalid_argument("near_zero_count: negative size");
  if (a.mask != nullptr && a.repeat < 1) throw std::invalid_argument("near_zero_count: mask repeat must be >= 1");
}

}  // namespace

int near_zero_count_cpu(const NearZeroArgs& a, int threads) {
  check(a);
  const int64_t numel = a.outer * a.channels * a.inner;
  if (numel == 0) return 0;
  const NearZeroKernels& k = kernels();
  const int team = team_size(numel, threads);
  const int dtype = int(a.dtype);
  const int64_t block = a.channels * a.inner;
  const int64_t stride = counter_stride(block);
  NearZeroSlice base{a.x, a.y, 0, 0, a.channels, a.inner, a.mask, a.repeat, a.num_thresholds, a.keys,
                     nullptr, nullptr, stride};
  if (a.inner >= kRowModeMinInner || a.num_thresholds * stride > kMaxCounterPositions ||
      a.outer >= (int64_t(1) << 32)) {
    PerThread<int64_t> by_channel(team, a.num_thresholds * a.channels);
    const int ran = parallel_slices(numel, team, [&](int t, int64_t begin, int64_t end) {
      NearZeroSlice s = base;
      s.begin = begin, s.end = end, s.by_channel = by_channel.of(t);
      k.rows[dtype](s);
    });
    for (int t = 0; t < team; ++t) {
      const int64_t* mine = by_channel.of(t);
      for (int64_t i = 0; i < a.num_thresholds * a.channels; ++i) a.counts[i] += mine[i];
    }
    return ran;
  }
  PerThread<uint32_t> by_position(team, a.num_thresholds * stride);
  const int ran = parallel_slices(numel, team, [&](int t, int64_t begin, int64_t end) {
    NearZeroSlice s = base;
    s.begin = begin, s.end = end, s.by_position = by_position.of(t);
    k.positions[dtype](s);
  });
  for (int t = 0; t < team; ++t) {
    const uint32_t* mine = by_position.of(t);
    for (int th = 0; th < a.num_thresholds; ++th)
      for (int64_t c = 0; c < a.channels; ++c) {
        int64_t sum = 0;
        for (int64_t j = 0; j < a.inner; ++j) sum += mine[th * stride + c * a.inner + j];
        a.counts[th * a.channels + c] += sum;
      }
  }
  return ran;
}

}  // namespace pozfast
