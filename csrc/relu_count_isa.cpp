// The per-thread loops of the CPU relu_count for one instruction set: the build compiles this file once per
// set, with POZFAST_ISA naming it and that set's compiler flags. Everything except the exported table has
// internal linkage and the element rule is always inlined, so no function compiled here for a wider set
// can be merged by the linker into another set's code (the baseline must run on any CPU).
#include <cstdint>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "relu_count.h"
#include "relu_count_isa.h"
#include "relu_elem.h"

#define POZFAST_CAT2(a, b) a##b
#define POZFAST_CAT(a, b) POZFAST_CAT2(a, b)

namespace pozfast {
namespace {

// Position mode works on tiles of about this many bytes of y, so that its second pass hits L1/L2.
constexpr int64_t kTileBytes = int64_t(12) << 10;
// 32-bit counters keep the vector loops as narrow as the data; they never see more than 2^31 counts
// (relu_run works in pieces, position counters are only used while outer < 2^32).
constexpr int64_t kPiece = int64_t(1) << 31;

// Not std::min: a library template instantiated here could be merged with the baseline's copy.
constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// relu of x[0, n) into y; returns the number of zeros written. n < 2^32.
template <typename Op>
uint32_t relu_span(const typename Op::Elem* x, typename Op::Elem* y, int64_t n) {
  uint32_t zeros = 0;
#pragma omp simd reduction(+ : zeros)
  for (int64_t i = 0; i < n; ++i) {
    const auto v = Op::relu(x[i]);
    y[i] = v;
    zeros += Op::is_zero(v);
  }
  return zeros;
}

// The row loop: relu_span, except where a hand-vectorised loop does better.
template <typename Op>
uint32_t relu_row_span(const typename Op::Elem* x, typename Op::Elem* y, int64_t n) {
  return relu_span<Op>(x, y, n);
}

#if defined(__AVX2__)
// float32 on x86: y = max(0, x) is one MAXPS with exactly the rule's result (it returns its second operand,
// x, when x is NaN or both are zeros) where compilers emit a compare and an and-not; the load folds into
// it, and the zeros are counted on y. Fewer instructions per byte keep more of the memory stream in
// flight: in place, on an AVX2 CPU, about 1.03x the time of torch.relu_ against 1.07x for the compiled loop.
template <>
uint32_t relu_row_span<ReluF32>(const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 zero = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi32(1);
  __m512i zeros = _mm512_setzero_si512();
  for (const int64_t body = n & ~int64_t(15); i < body; i += 16) {
    const __m512 r = _mm512_max_ps(zero, _mm512_loadu_ps(x + i));
    _mm512_storeu_ps(y + i, r);
    zeros = _mm512_mask_add_epi32(zeros, _mm512_cmp_ps_mask(r, zero, _CMP_EQ_OQ), zeros, one);
  }
  const uint32_t head = uint32_t(_mm512_reduce_add_epi32(zeros));
#else
  const __m256 zero = _mm256_setzero_ps();
  __m256i zeros = _mm256_setzero_si256();
  for (const int64_t body = n & ~int64_t(15); i < body; i += 16) {  // one 64-byte line per iteration
    const __m256 r0 = _mm256_max_ps(zero, _mm256_loadu_ps(x + i));
    const __m256 r1 = _mm256_max_ps(zero, _mm256_loadu_ps(x + i + 8));
    _mm256_storeu_ps(y + i, r0);
    _mm256_storeu_ps(y + i + 8, r1);
    // A true compare is all ones (-1): subtracting the sum of two counts them.
    zeros = _mm256_sub_epi32(zeros, _mm256_add_epi32(_mm256_castps_si256(_mm256_cmp_ps(r0, zero, _CMP_EQ_OQ)),
                                                     _mm256_castps_si256(_mm256_cmp_ps(r1, zero, _CMP_EQ_OQ))));
  }
  __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(zeros), _mm256_extracti128_si256(zeros, 1));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(1, 0, 3, 2)));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(2, 3, 0, 1)));
  const uint32_t head = uint32_t(_mm_cvtsi128_si32(sum));
#endif
  return head + relu_span<ReluF32>(x + i, y + i, n - i);
}
#endif

template <typename Op>
int64_t relu_run(const typename Op::Elem* x, typename Op::Elem* y, int64_t n) {
  int64_t total = 0;
  for (int64_t start = 0; start < n; start += kPiece)
    total += relu_row_span<Op>(x + start, y + start, min64(n - start, kPiece));
  return total;
}

template <typename Op>
void rows(const ReluSlice& s) {
  using U = typename Op::Elem;
  const U* x = static_cast<const U*>(s.x);
  U* y = static_cast<U*>(s.y);
  // The row and its channel advance with i: no division per row.
  int64_t row_end = (s.begin / s.inner + 1) * s.inner;
  int64_t channel = (s.begin / s.inner) % s.channels;
  for (int64_t i = s.begin; i < s.end; i = row_end, row_end += s.inner) {
    s.by_channel[channel] += relu_run<Op>(x + i, y + i, min64(s.end, row_end) - i);
    channel = channel + 1 == s.channels ? 0 : channel + 1;
  }
}

template <typename Op>
void relu_positions(const typename Op::Elem* x, typename Op::Elem* y, uint32_t* pos_counts, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const auto v = Op::relu(x[i]);
    y[i] = v;
    pos_counts[i] += Op::is_zero(v);
  }
}

// Four consecutive blocks in one pass, one counter update per four elements: for blocks too large for a
// tile, whose second pass would read y back from L2 while nothing streams in from memory.
template <typename Op>
void relu_positions4(const typename Op::Elem* x, typename Op::Elem* y, uint32_t* pos_counts, int64_t block) {
#pragma omp simd
  for (int64_t i = 0; i < block; ++i) {
    const auto v0 = Op::relu(x[i]), v1 = Op::relu(x[i + block]);
    const auto v2 = Op::relu(x[i + 2 * block]), v3 = Op::relu(x[i + 3 * block]);
    y[i] = v0;
    y[i + block] = v1;
    y[i + 2 * block] = v2;
    y[i + 3 * block] = v3;
    pos_counts[i] += uint32_t(Op::is_zero(v0)) + uint32_t(Op::is_zero(v1)) + uint32_t(Op::is_zero(v2)) +
                     uint32_t(Op::is_zero(v3));
  }
}

template <typename Op>
void relu_only(const typename Op::Elem* x, typename Op::Elem* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = Op::relu(x[i]);
}

// Zeros of four consecutive blocks of y, added to per-position counters: one counter update per four
// elements. Reads y while it is still in cache from relu_only.
template <typename Op>
void count_positions4(const typename Op::Elem* y, uint32_t* pos_counts, int64_t block) {
#pragma omp simd
  for (int64_t i = 0; i < block; ++i) {
    pos_counts[i] += uint32_t(Op::is_zero(y[i])) + uint32_t(Op::is_zero(y[i + block])) +
                     uint32_t(Op::is_zero(y[i + 2 * block])) + uint32_t(Op::is_zero(y[i + 3 * block]));
  }
}

template <typename Op>
void positions(const ReluSlice& s) {
  using U = typename Op::Elem;
  const U* x = static_cast<const U*>(s.x);
  U* y = static_cast<U*>(s.y);
  const int64_t block = s.channels * s.inner;
  const int64_t tile_blocks = kTileBytes / (block * int64_t(sizeof(U)));
  int64_t i = s.begin;
  while (i < s.end) {
    const int64_t pos = i % block;
    const int64_t whole = (s.end - i) / block;
    if (pos == 0 && whole >= 4 && tile_blocks < 4) {
      relu_positions4<Op>(x + i, y + i, s.by_position, block);
      i += 4 * block;
    } else if (pos == 0 && whole >= 4) {
      // A cache-sized tile: relu as one linear stream (what the prefetchers like), then the counts from
      // the cached y, four blocks per counter update.
      const int64_t groups = min64(whole, tile_blocks) / 4;
      relu_only<Op>(x + i, y + i, 4 * groups * block);
      for (int64_t g = 0; g < groups; ++g) count_positions4<Op>(y + i + 4 * g * block, s.by_position, block);
      i += 4 * groups * block;
    } else {
      const int64_t stop = min64(s.end, i + (block - pos));
      relu_positions<Op>(x + i, y + i, s.by_position + pos, stop - i);
      i = stop;
    }
  }
}

}  // namespace

static_assert(int(DType::Float32) == 0 && int(DType::Float64) == 1 && int(DType::Float16) == 2 &&
                  int(DType::BFloat16) == 3,
              "ReluKernels tables are indexed by DType");

extern const ReluKernels POZFAST_CAT(relu_kernels_, POZFAST_ISA) = {
    {rows<ReluF32>, rows<ReluF64>, rows<ReluF16>, rows<ReluBF16>},
    {positions<ReluF32>, positions<ReluF64>, positions<ReluF16>, positions<ReluBF16>},
};

}  // namespace pozfast
