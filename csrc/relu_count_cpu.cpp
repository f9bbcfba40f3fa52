// CPU (OpenMP) fused ReLU + per-channel zero count. One pass over x: each thread takes a contiguous
// slice of the flat buffer, writes y and accumulates counts in thread-local int64 arrays that are
// summed at the end, so there are no atomics and no temporaries of x's size.
#include <algorithm>
#include <vector>

#include "relu_count.h"
#include "relu_elem.h"

#ifdef POZFAST_OPENMP
#include <omp.h>
#endif

namespace pozfast {
namespace {

// Below this many elements a single thread is faster than waking the team.
constexpr int64_t kSerialElems = int64_t(1) << 15;
// Rows at least this long are counted row by row; shorter ones by position within a [channels, inner] block.
constexpr int64_t kRowModeMinInner = 64;
// Largest channels*inner block that gets per-position thread-local counters.
constexpr int64_t kMaxBlockPositions = int64_t(1) << 18;

// Position mode works on tiles of about this many bytes of y, so that its second pass hits L1/L2.
constexpr int64_t kTileBytes = int64_t(12) << 10;
// 32-bit counters keep the vector loops as narrow as the data; they never see more than 2^31 counts
// (relu_run works in pieces, position counters are only used while outer < 2^32).
constexpr int64_t kPiece = int64_t(1) << 31;

template <typename Op>
inline int64_t relu_run(const typename Op::Elem* x, typename Op::Elem* y, int64_t n) {
  int64_t total = 0;
  for (int64_t start = 0; start < n; start += kPiece) {
    const int64_t stop = std::min(n, start + kPiece);
    uint32_t zeros = 0;
#pragma omp simd reduction(+ : zeros)
    for (int64_t i = start; i < stop; ++i) {
      const auto v = Op::relu(x[i]);
      y[i] = v;
      zeros += Op::is_zero(v);
    }
    total += zeros;
  }
  return total;
}

template <typename Op>
inline void relu_positions(const typename Op::Elem* x, typename Op::Elem* y, uint32_t* pos_counts,
                           int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const auto v = Op::relu(x[i]);
    y[i] = v;
    pos_counts[i] += Op::is_zero(v);
  }
}

template <typename Op>
inline void relu_only(const typename Op::Elem* x, typename Op::Elem* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = Op::relu(x[i]);
}

// Zeros of four consecutive blocks of y, added to per-position counters: one counter update per four
// elements. Reads y while it is still in cache from relu_only.
template <typename Op>
inline void count_positions4(const typename Op::Elem* y, uint32_t* pos_counts, int64_t block) {
#pragma omp simd
  for (int64_t i = 0; i < block; ++i) {
    pos_counts[i] += uint32_t(Op::is_zero(y[i])) + uint32_t(Op::is_zero(y[i + block])) +
                     uint32_t(Op::is_zero(y[i + 2 * block])) + uint32_t(Op::is_zero(y[i + 3 * block]));
  }
}

int team_size(int64_t numel) {
#ifdef POZFAST_OPENMP
  return numel < kSerialElems ? 1 : omp_get_max_threads();
#else
  (void)numel;
  return 1;
#endif
}

// Runs body(thread, begin, end) over [0, numel) split into cache-line aligned slices, one per thread.
template <typename Body>
void parallel_slices(int64_t numel, int threads, const Body& body) {
  const int64_t per = ((numel + threads - 1) / threads + 63) / 64 * 64;
#ifdef POZFAST_OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
#endif
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = std::min(numel, per * t);
    const int64_t end = std::min(numel, begin + per);
    body(t, begin, end);
  }
}

template <typename Op>
void relu_count_typed(const void* xv, void* yv, int64_t* counts, int64_t outer, int64_t channels,
                      int64_t inner) {
  using U = typename Op::Elem;
  const U* x = static_cast<const U*>(xv);
  U* y = static_cast<U*>(yv);
  const int64_t numel = outer * channels * inner;
  std::fill(counts, counts + channels, int64_t(0));
  if (numel == 0) return;
  const int threads = team_size(numel);
  const int64_t block = channels * inner;
  const bool row_mode = inner >= kRowModeMinInner || block > kMaxBlockPositions || outer >= (int64_t(1) << 32);
  // Thread-local counters: per channel (int64) in row mode, per position in a block (uint32) otherwise.
  const int64_t width = row_mode ? channels : block;
  std::vector<int64_t> per_channel(row_mode ? static_cast<size_t>(threads) * width : 0, 0);
  std::vector<uint32_t> per_position(row_mode ? 0 : static_cast<size_t>(threads) * width, 0);

  const int64_t tile_blocks = std::max<int64_t>(4, kTileBytes / (block * int64_t(sizeof(U))));

  parallel_slices(numel, threads, [&](int t, int64_t begin, int64_t end) {
    const size_t offset = static_cast<size_t>(t) * width;
    int64_t i = begin;
    while (i < end) {
      if (row_mode) {
        const int64_t row = i / inner;
        const int64_t stop = std::min(end, (row + 1) * inner);
        per_channel[offset + row % channels] += relu_run<Op>(x + i, y + i, stop - i);
        i = stop;
      } else {
        const int64_t pos = i % block;
        const int64_t groups = std::min((end - i) / block, tile_blocks) / 4;
        if (pos == 0 && groups > 0) {
          // A cache-sized tile: relu as one linear stream (what the prefetchers like), then the
          // counts from the cached y, four blocks per counter update.
          relu_only<Op>(x + i, y + i, 4 * groups * block);
          for (int64_t g = 0; g < groups; ++g)
            count_positions4<Op>(y + i + 4 * g * block, per_position.data() + offset, block);
          i += 4 * groups * block;
        } else {
          const int64_t stop = std::min(end, i + (block - pos));
          relu_positions<Op>(x + i, y + i, per_position.data() + offset + pos, stop - i);
          i = stop;
        }
      }
    }
  });

  for (int t = 0; t < threads; ++t) {
    const size_t offset = static_cast<size_t>(t) * width;
    if (row_mode) {
      for (int64_t c = 0; c < channels; ++c) counts[c] += per_channel[offset + c];
    } else {
      for (int64_t p = 0; p < block; ++p) counts[p / inner] += per_position[offset + p];
    }
  }
}

}  // namespace

void relu_count_cpu(const void* x, void* y, int64_t* counts, int64_t outer, int64_t channels,
                    int64_t inner, DType dtype) {
  switch (dtype) {
    case DType::Float32: return relu_count_typed<ReluF32>(x, y, counts, outer, channels, inner);
    case DType::Float64: return relu_count_typed<ReluF64>(x, y, counts, outer, channels, inner);
    case DType::Float16: return relu_count_typed<ReluF16>(x, y, counts, outer, channels, inner);
    case DType::BFloat16: return relu_count_typed<ReluBF16>(x, y, counts, outer, channels, inner);
  }
}

int cpu_num_threads() {
#ifdef POZFAST_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace pozfast
