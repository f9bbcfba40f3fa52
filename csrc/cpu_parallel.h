// OpenMP helpers of the CPU counting kernels: how many threads a call gets, contiguous cache-line aligned
// slices of a flat buffer (one per thread), and per-thread counters on cache lines of their own.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef POZFAST_OPENMP
#include <omp.h>
#endif

namespace pozfast {

// Each thread gets at least this many elements: on fewer, waking a thread costs more than it saves.
constexpr int64_t kParallelGrain = int64_t(1) << 15;
constexpr int64_t kCacheLine = 64;

// Counters of `width` entries per thread, each thread's on cache lines of its own (no false sharing),
// zero-initialised.
template <typename T>
class PerThread {
 public:
  PerThread(int threads, int64_t width)
      : stride_((width * int64_t(sizeof(T)) + kCacheLine - 1) / kCacheLine * kCacheLine / int64_t(sizeof(T))),
        storage_(static_cast<size_t>(threads * stride_ + kCacheLine / int64_t(sizeof(T))), T(0)) {
    const auto misalign = reinterpret_cast<uintptr_t>(storage_.data()) % kCacheLine;
    base_ = storage_.data() + (misalign ? (kCacheLine - misalign) / sizeof(T) : 0);
  }
  T* of(int t) { return base_ + t * stride_; }

 private:
  int64_t stride_;
  std::vector<T> storage_;
  T* base_;
};

// Threads for a call over numel elements: at most `threads` (the caller passes torch.get_num_threads()).
inline int team_size(int64_t numel, int threads) {
#ifdef POZFAST_OPENMP
  return static_cast<int>(std::clamp<int64_t>(numel / kParallelGrain, 1, std::max(threads, 1)));
#else
  (void)numel, (void)threads;
  return 1;
#endif
}

// Runs body(thread, begin, end) over [0, numel) split into `team` cache-line aligned slices, one per
// thread; returns the number of threads that ran.
template <typename Body>
int parallel_slices(int64_t numel, int team, const Body& body) {
  const int64_t per = ((numel + team - 1) / team + 63) / 64 * 64;
  int ran = 1;
#ifdef POZFAST_OPENMP
#pragma omp parallel for num_threads(team) schedule(static, 1)
#endif
  for (int t = 0; t < team; ++t) {
#ifdef POZFAST_OPENMP
    if (t == 0) ran = omp_get_num_threads();
#endif
    const int64_t begin = std::min(numel, per * t);
    body(t, begin, std::min(numel, begin + per));
  }
  return ran;
}

}  // namespace pozfast
