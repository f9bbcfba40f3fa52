// The per-thread loops of the CPU near-zero counts for one instruction set: the build compiles this file
// once per set, with POZFAST_ISA naming it and that set's compiler flags. As in relu_count_isa.cpp,
// everything except the exported table has internal linkage, so that no function compiled for a wider
// set can be merged into the baseline's code.
//
// The loops work on bit patterns (near_zero_elem.h) in GCC/Clang vector extensions as wide as the
// instruction set's registers. Thresholds are counted in groups of up to kGroup per pass, each vector of
// elements compared with every threshold of the group in registers (one compare and one add per threshold
// and vector): up to kGroup thresholds cost one pass over memory; more run further passes over a
// cache-sized piece that the first pass left in L1. With ReLU, the first pass also writes relu(x) (in one
// loop with the counting: measured faster at memory scale than writing a cached tile first, in place).
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "near_zero.h"
#include "near_zero_elem.h"
#include "near_zero_isa.h"

#define POZFAST_CAT2(a, b) a##b
#define POZFAST_CAT(a, b) POZFAST_CAT2(a, b)

namespace pozfast {
namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

constexpr int kGroup = 8;
// With more than kGroup thresholds, long rows are counted in pieces of this many bytes, and short rows in
// column tiles of this many bytes per row, so that the passes after the first read from L1.
constexpr int64_t kPieceBytes = int64_t(2) << 10;
// Otherwise pieces of at most this many elements, so that 32-bit counters hold any piece's counts.
constexpr int64_t kMaxPiece = int64_t(1) << 30;
// Rows counted together in position mode: one counter update per kRowsAtOnce elements.
constexpr int kRowsAtOnce = 4;

// Not std::min: a library template instantiated here could be merged with the baseline's copy.
constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The element rule of E on vectors of bit patterns (a lane per element), with 32-bit counters per lane.
template <typename E>
struct Lanes {
  using Key = typename E::Key;
  static constexpr int kWidth = kVectorBytes / int(sizeof(Key));
  using Keys [[gnu::vector_size(kVectorBytes)]] = Key;
  using Counts [[gnu::vector_size(kWidth * 4)]] = uint32_t;
  static constexpr Key kSign = static_cast<Key>(uint64_t(1) << (8 * sizeof(Key) - 1));  // -0.0
  // A lane counts hits as -1 each (a true compare): 16-bit lanes take at most this many vectors.
  static constexpr int64_t kMaxVectors = sizeof(Key) == 2 ? 32767 : kMaxPiece;

  static Keys load(const void* p) {
    Keys v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(void* p, Keys v) { std::memcpy(p, &v, sizeof v); }
  // key <= tau as one compare, tau + 1 > key (SSE and AVX2 have no integer <=); tau + 1 <= inf + 1 fits.
  static Keys above(Key tau) { return Keys{} + static_cast<Key>(tau + 1); }
  // relu_elem.h's rule, x < 0 ? 0 : x. float and double compare as floats (NaN and -0.0 pass); the 16-bit
  // types on bit patterns: x < 0 exactly when the sign is set and 0 < |x| <= inf, i.e. (as signed
  // integers) -0.0 < bits <= -inf.
  static Keys relu(Keys b) {
    if constexpr (std::is_floating_point<typename E::Elem>::value) {
      using Floats [[gnu::vector_size(kVectorBytes)]] = typename E::Elem;
      const Floats f = (Floats)b;
      return (Keys)(f < 0 ? Floats{} : f);
    } else {
      const Keys negative = (b > kSign) & (b <= static_cast<Key>(kSign | E::kInf));
      return b & ~negative;
    }
  }
  static Keys magnitude(Keys b) { return b & E::kMagnitude; }
};

template <typename E>
struct Thresholds {
  typename E::Key key[kMaxThresholds];
  int count;

  explicit Thresholds(const NearZeroSlice& s) : count(s.num_thresholds) {
    for (int t = 0; t < count; ++t) key[t] = static_cast<typename E::Key>(s.keys[t]);
  }
};

bool row_counted(const NearZeroSlice& s, int64_t outer_row) {
  return s.mask == nullptr || s.mask[outer_row / s.repeat] != 0;
}

template <typename E>
void relu_only(const typename E::Elem* x, typename E::Elem* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = E::relu(x[i]);
}

// out[k] += the number of elements of x[0, n) with key <= tau[k], k < K (n <= kMaxPiece). kRelu: relu(x)
// is written to y and counted instead.
template <typename E, int K, bool kRelu>
void count_span(const typename E::Elem* x, typename E::Elem* y, int64_t n, const typename E::Key* tau,
                uint32_t* out) {
  using L = Lanes<E>;
  typename L::Keys above[K];
  for (int k = 0; k < K; ++k) above[k] = L::above(tau[k]);
  int64_t i = 0;
  while (i + L::kWidth <= n) {
    typename L::Keys hits[K] = {};
    const int64_t stop = i + min64((n - i) / L::kWidth, L::kMaxVectors) * L::kWidth;
    for (; i < stop; i += L::kWidth) {
      typename L::Keys v = L::load(x + i);
      if (kRelu) {
        v = L::relu(v);
        L::store(y + i, v);
      }
      v = L::magnitude(v);
      for (int k = 0; k < K; ++k) hits[k] += (above[k] > v);
    }
    for (int k = 0; k < K; ++k)
      for (int l = 0; l < L::kWidth; ++l) out[k] -= uint32_t(int32_t(hits[k][l]));
  }
  for (; i < n; ++i) {
    auto v = x[i];
    if (kRelu) y[i] = v = E::relu(v);
    const typename E::Key key = E::key(v);
    for (int k = 0; k < K; ++k) out[k] += uint32_t(key <= tau[k]);
  }
}

// cnt[k * cnt_stride + j] += how many of the R rows x[r * row_stride + j], r < R, have key <= tau[k], for
// j < n and k < K. kRelu as in count_span.
template <typename E, int K, int R, bool kRelu>
void count_positions(const typename E::Elem* x, typename E::Elem* y, int64_t row_stride, int64_t n,
                     const typename E::Key* tau, uint32_t* cnt, int64_t cnt_stride) {
  using L = Lanes<E>;
  typename L::Keys above[K];
  for (int k = 0; k < K; ++k) above[k] = L::above(tau[k]);
  int64_t j = 0;
  for (; j + L::kWidth <= n; j += L::kWidth) {
    typename L::Keys v[R];
    for (int r = 0; r < R; ++r) {
      v[r] = L::load(x + r * row_stride + j);
      if (kRelu) {
        v[r] = L::relu(v[r]);
        L::store(y + r * row_stride + j, v[r]);
      }
      v[r] = L::magnitude(v[r]);
    }
    for (int k = 0; k < K; ++k) {
      typename L::Keys hits = (above[k] > v[0]);
      for (int r = 1; r < R; ++r) hits += (above[k] > v[r]);
      typename L::Counts c;
      std::memcpy(&c, cnt + k * cnt_stride + j, sizeof c);
      c -= __builtin_convertvector(hits, typename L::Counts);
      std::memcpy(cnt + k * cnt_stride + j, &c, sizeof c);
    }
  }
  for (; j < n; ++j) {
    typename E::Key key[R];
    for (int r = 0; r < R; ++r) {
      auto v = x[r * row_stride + j];
      if (kRelu) y[r * row_stride + j] = v = E::relu(v);
      key[r] = E::key(v);
    }
    for (int k = 0; k < K; ++k) {
      uint32_t sum = 0;
      for (int r = 0; r < R; ++r) sum += uint32_t(key[r] <= tau[k]);
      cnt[k * cnt_stride + j] += sum;
    }
  }
}

// The kernels for groups of 1..kGroup thresholds, indexed by the group's size.
template <typename E, bool kRelu>
struct SpanGroups {
  using Fn = void (*)(const typename E::Elem*, typename E::Elem*, int64_t, const typename E::Key*, uint32_t*);
  static constexpr Fn fn[kGroup + 1] = {nullptr,
                                        count_span<E, 1, kRelu>, count_span<E, 2, kRelu>,
                                        count_span<E, 3, kRelu>, count_span<E, 4, kRelu>,
                                        count_span<E, 5, kRelu>, count_span<E, 6, kRelu>,
                                        count_span<E, 7, kRelu>, count_span<E, 8, kRelu>};
};

template <typename E, int R, bool kRelu>
struct PositionGroups {
  using Fn = void (*)(const typename E::Elem*, typename E::Elem*, int64_t, int64_t, const typename E::Key*,
                      uint32_t*, int64_t);
  static constexpr Fn fn[kGroup + 1] = {nullptr,
                                        count_positions<E, 1, R, kRelu>, count_positions<E, 2, R, kRelu>,
                                        count_positions<E, 3, R, kRelu>, count_positions<E, 4, R, kRelu>,
                                        count_positions<E, 5, R, kRelu>, count_positions<E, 6, R, kRelu>,
                                        count_positions<E, 7, R, kRelu>, count_positions<E, 8, R, kRelu>};
};

int group_size(int count, int g) { return count - g < kGroup ? count - g : kGroup; }

// One run of n elements of a single channel: out[t * stride] += its count at threshold t. kRelu as in
// count_span; the groups after the first count the cached y.
template <typename E, bool kRelu>
void count_run(const typename E::Elem* x, typename E::Elem* y, int64_t n, const Thresholds<E>& th, int64_t* out,
               int64_t stride) {
  const int64_t piece = th.count > kGroup ? kPieceBytes / int64_t(sizeof(typename E::Elem)) : kMaxPiece;
  uint32_t partial[kMaxThresholds];
  for (int64_t start = 0; start < n; start += piece) {
    const int64_t len = min64(piece, n - start);
    for (int t = 0; t < th.count; ++t) partial[t] = 0;
    SpanGroups<E, kRelu>::fn[group_size(th.count, 0)](x + start, y + start, len, th.key, partial);
    const typename E::Elem* counted = kRelu ? y : x;
    for (int g = kGroup; g < th.count; g += kGroup)
      SpanGroups<E, false>::fn[group_size(th.count, g)](counted + start, nullptr, len, th.key + g, partial + g);
    for (int t = 0; t < th.count; ++t) out[t * stride] += partial[t];
  }
}

template <typename E, bool kRelu>
void rows(const NearZeroSlice& s) {
  using U = typename E::Elem;
  const U* x = static_cast<const U*>(s.x);
  U* y = static_cast<U*>(s.y);
  const Thresholds<E> th(s);
  // The row, its channel and its outer row advance with i: no division per row but the mask's.
  const int64_t first = s.begin / s.inner;
  int64_t row_end = (first + 1) * s.inner;
  int64_t channel = first % s.channels;
  int64_t outer_row = first / s.channels;
  for (int64_t i = s.begin; i < s.end; i = row_end, row_end += s.inner) {
    const int64_t stop = min64(s.end, row_end);
    if (row_counted(s, outer_row)) count_run<E, kRelu>(x + i, y + i, stop - i, th, s.by_channel + channel, s.channels);
    else if (kRelu) relu_only<E>(x + i, y + i, stop - i);
    if (++channel == s.channels) channel = 0, ++outer_row;
  }
}

// R rows of n positions, starting at position `pos` of their blocks (row stride `block`), counted into
// by_position[t * s.counter_stride + pos + j]. kRelu as in count_span; thresholds after the first group
// are counted from y, in column tiles that the first group left in L1.
template <typename E, bool kRelu, int R>
void count_block_rows(const NearZeroSlice& s, const typename E::Elem* x, typename E::Elem* y, int64_t pos,
                      int64_t n, const Thresholds<E>& th) {
  const int64_t block = s.channels * s.inner;
  const int64_t tile = th.count > kGroup ? kPieceBytes / int64_t(sizeof(typename E::Elem)) : n;
  const typename E::Elem* counted = kRelu ? y : x;
  for (int64_t j = 0; j < n; j += tile) {
    const int64_t len = min64(tile, n - j);
    uint32_t* cnt = s.by_position + pos + j;
    PositionGroups<E, R, kRelu>::fn[group_size(th.count, 0)](x + j, y + j, block, len, th.key, cnt,
                                                            s.counter_stride);
    for (int g = kGroup; g < th.count; g += kGroup)
      PositionGroups<E, R, false>::fn[group_size(th.count, g)](counted + j, nullptr, block, len, th.key + g,
                                                              cnt + g * s.counter_stride, s.counter_stride);
  }
}

template <typename E, bool kRelu>
void positions(const NearZeroSlice& s) {
  using U = typename E::Elem;
  const U* x = static_cast<const U*>(s.x);
  U* y = static_cast<U*>(s.y);
  const Thresholds<E> th(s);
  const int64_t block = s.channels * s.inner;
  int64_t row = s.begin / block;
  int64_t i = s.begin;
  while (i < s.end) {
    const int64_t pos = i - row * block;
    if (pos == 0 && s.end - i >= kRowsAtOnce * block) {
      bool all = true;
      for (int r = 0; r < kRowsAtOnce; ++r) all = all && row_counted(s, row + r);
      if (all) {
        count_block_rows<E, kRelu, kRowsAtOnce>(s, x + i, y + i, 0, block, th);
        i += kRowsAtOnce * block;
        row += kRowsAtOnce;
        continue;
      }
    }
    const int64_t stop = min64(s.end, (row + 1) * block);
    if (row_counted(s, row)) count_block_rows<E, kRelu, 1>(s, x + i, y + i, pos, stop - i, th);
    else if (kRelu) relu_only<E>(x + i, y + i, stop - i);
    i = stop;
    ++row;
  }
}

template <typename E>
void rows_any(const NearZeroSlice& s) {
  if (s.y) rows<E, true>(s);
  else rows<E, false>(s);
}

template <typename E>
void positions_any(const NearZeroSlice& s) {
  if (s.y) positions<E, true>(s);
  else positions<E, false>(s);
}

}  // namespace

static_assert(int(DType::Float32) == 0 && int(DType::Float64) == 1 && int(DType::Float16) == 2 &&
                  int(DType::BFloat16) == 3,
              "NearZeroKernels tables are indexed by DType");

extern const NearZeroKernels POZFAST_CAT(near_zero_kernels_, POZFAST_ISA) = {
    {rows_any<NearZeroF32>, rows_any<NearZeroF64>, rows_any<NearZeroF16>, rows_any<NearZeroBF16>},
    {positions_any<NearZeroF32>, positions_any<NearZeroF64>, positions_any<NearZeroF16>,
     positions_any<NearZeroBF16>},
};

}  // namespace pozfast
