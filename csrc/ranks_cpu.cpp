// Rank statistics on CPU threads. Every parallel loop runs over more chunks than threads, taken
// dynamically, so that a thread held up on a busy core delays its chunk, not a fixed share of the work;
// threads meet only at the end of a loop (OpenMP's barrier, which sleeps after a short spin under the
// default wait policy).
//
// rank_cpu: keys that order like the doubles, sorted with their indices by a stable MSD radix sort over
// the bits that vary, then tie groups from the sorted keys.
// kendall_counts_cpu (Knight's algorithm): y's keys in x's order, each run of tied x sorted by y, joint
// ties counted in those runs, and discordant pairs as the inversions of that sequence (and y's ties),
// counted by an MSD radix partition on 4-bit digits: in each range of equal higher digits, the pairs whose
// digits are inverted, then a stable partition by digit and the same in each part. y needs no sort.
//
// Both recursions split a range into buckets by one digit and recurse depth first: after a level or two
// the ranges fit in cache, and each is finished by one thread.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "ranks.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pozfast {
namespace {

// Each chunk of a parallel loop holds at least this many elements; each thread gets about kChunksPerThread.
constexpr int64_t kGrain = int64_t(1) << 15;
constexpr int64_t kChunksPerThread = 4;
// Loops over fewer elements run on the calling thread alone: waking another thread costs tens of
// microseconds on an idle machine and milliseconds on a busy one, more than such a loop takes.
constexpr int64_t kParallelMin = int64_t(1) << 18;
// Ranges above this length are split with 11-bit digits (histograms of 2^11 bins per chunk, in L1),
// in parallel chunks; shorter ones, which fit in L2, on one thread with digits of about log2(length) - 1
// bits, so that a split costs about as much as a pass over the range.
constexpr int64_t kLarge = int64_t(1) << 14;
constexpr int kMaxDigitBits = 11;
// Ranges and tied runs up to this length are sorted by insertion.
constexpr int64_t kInsertionSort = 32;
constexpr int kInvBits = 4;
// Loops that read or write at random indices prefetch this many elements ahead: the accesses miss cache
// and TLB, and without prefetches only a few are in flight at once.
constexpr int64_t kPrefetch = 16;
constexpr int kInvBuckets = 1 << kInvBits;

struct Chunks {
  int64_t n, count, size;
  Chunks(int64_t n_, int threads) : n(n_) {
    const int64_t wanted =
        n < kParallelMin ? 1 : std::max<int64_t>(1, std::min<int64_t>(n / kGrain, int64_t(threads) * kChunksPerThread));
    size = std::max<int64_t>(1, (n + wanted - 1) / wanted);
    count = n ? (n + size - 1) / size : 0;
  }
  int64_t begin(int64_t c) const { return std::min(n, c * size); }
  int64_t end(int64_t c) const { return std::min(n, (c + 1) * size); }
};

// body(c) for every chunk c, on at most `threads` threads taking chunks as they finish.
template <typename Body>
void parallel_chunks(const Chunks& chunks, int threads, const Body& body) {
#ifdef POZFAST_OPENMP
  const int team = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, chunks.count)));
#pragma omp parallel for num_threads(team) schedule(dynamic, 1) if (team > 1)
#endif
  for (int64_t c = 0; c < chunks.count; ++c) body(c);
  (void)threads;
}

// visit(d, begin, end, threads) for each non-empty bucket d, [starts[d], starts[d + 1]), of a split range:
// buckets too large to share out one after another with all threads, the others side by side, one thread
// each.
template <typename Visit>
void visit_buckets(const std::vector<int64_t>& starts, int threads, const Visit& visit) {
  const int64_t buckets = static_cast<int64_t>(starts.size()) - 1;
  if (starts.back() - starts.front() < kParallelMin) threads = 1;
  const int64_t share = threads > 1 ? (starts.back() - starts.front()) / (2 * int64_t(threads))
                                    : std::numeric_limits<int64_t>::max();
  std::vector<int64_t> rest;
  for (int64_t d = 0; d < buckets; ++d) {
    const int64_t size = starts[d + 1] - starts[d];
    if (size > share) visit(d, starts[d], starts[d + 1], threads);
    else if (size > 0) rest.push_back(d);
  }
  const int64_t count = static_cast<int64_t>(rest.size());
#ifdef POZFAST_OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && count > 1)
#endif
  for (int64_t r = 0; r < count; ++r) visit(rest[r], starts[rest[r]], starts[rest[r] + 1], 1);
}

// Bits of the digit that splits a range of `size` elements, of at most `available` bits.
int digit_bits(int64_t size, int available) {
  const int wanted = size > kLarge ? kMaxDigitBits : std::max(1, 62 - __builtin_clzll(uint64_t(size)));
  return std::min(wanted, available);
}

// Histograms of digit (key >> shift) & mask over the chunks of [b, b + chunks.n) (chunk c's at
// hist[c * buckets]), turned into each chunk's first output position per digit; bucket starts into
// starts[0 .. buckets]. Returns the largest bucket's size.
template <typename Key>
int64_t split_positions(const Key* keys, int64_t b, const Chunks& chunks, int shift, int64_t buckets,
                        std::vector<int64_t>& hist, std::vector<int64_t>& starts, int threads) {
  const Key mask = static_cast<Key>(buckets - 1);
  hist.assign(static_cast<size_t>(chunks.count * buckets), 0);
  parallel_chunks(chunks, threads, [&](int64_t c) {
    int64_t* h = hist.data() + c * buckets;
    for (int64_t i = b + chunks.begin(c); i < b + chunks.end(c); ++i) ++h[(keys[i] >> shift) & mask];
  });
  starts.resize(static_cast<size_t>(buckets + 1));
  int64_t running = b, largest = 0;
  for (int64_t d = 0; d < buckets; ++d) {
    starts[d] = running;
    for (int64_t c = 0; c < chunks.count; ++c) {
      const int64_t count = hist[c * buckets + d];
      hist[c * buckets + d] = running;
      running += count;
    }
    largest = std::max(largest, running - starts[d]);
  }
  starts[buckets] = running;
  return largest;
}

// Large buffers are faulted in with one call, on transparent huge pages where the kernel allows: page
// faults one 4 KiB page at a time (a scatter touches pages in random order) cost more than the sort in
// virtual machines. Both calls are advice; a kernel that refuses them leaves the ordinary faults.
constexpr size_t kPrefaultBytes = size_t(4) << 20;

void prefault(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kPrefaultBytes) return;
  const uintptr_t page = 4096, begin = (reinterpret_cast<uintptr_t>(data) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(page - 1);
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels answer EINVAL
#endif
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
#else
  (void)data, (void)bytes;
#endif
}

// An uninitialised array for scratch work, faulted in by prefault.
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) : size_(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T)) {
#if defined(__linux__)
    if (size_ >= kPrefaultBytes) {
      void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p != MAP_FAILED) {
        mapped_ = true;
        data_ = static_cast<T*>(p);
        prefault(p, size_);
        return;
      }
    }
#endif
    data_ = static_cast<T*>(::operator new(size_));
  }
  ~Scratch() {
#if defined(__linux__)
    if (mapped_) {
      munmap(data_, size_);
      return;
    }
#endif
    ::operator delete(data_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }

 private:
  size_t size_;
  T* data_ = nullptr;
  bool mapped_ = false;
};

// A uint64 that orders like the double (NaN excluded); -0.0 becomes 0.0 first, so that the two are tied.
inline uint64_t order_key(double v) {
  v += 0.0;
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits >> 63) ? ~bits : (bits | (uint64_t(1) << 63));
}

// Stable ascending sort of keys with their indices, MSD radix. Two buffers: 0 holds the result (the
// caller's sorted keys and order), 1 is scratch; a range's data may sit in either until it is sorted.
class KeySort {
 public:
  KeySort(uint64_t* keys0, RankIndex* idx0, uint64_t* keys1, RankIndex* idx1)
      : keys_{keys0, keys1}, idx_{idx0, idx1} {}

  // Sorts [b, e) of buffer `buf` by key bits [lo, hi) (the bits above are equal in the range).
  void sort(int64_t b, int64_t e, int buf, int lo, int hi, int threads) {
    if (e - b <= kLarge || hi <= lo) return sort_small(b, e, buf, lo, hi);
    const int width = digit_bits(e - b, hi - lo), shift = hi - width;
    const int64_t buckets = int64_t(1) << width;
    const Chunks chunks(e - b, threads);
    std::vector<int64_t> hist, starts;
    if (split_positions(keys_[buf], b, chunks, shift, buckets, hist, starts, threads) == e - b)
      return sort(b, e, buf, lo, shift, threads);  // one digit value here: split by the next digit
    const uint64_t* src_keys = keys_[buf];
    const RankIndex* src_idx = idx_[buf];
    uint64_t* dst_keys = keys_[1 - buf];
    RankIndex* dst_idx = idx_[1 - buf];
    const uint64_t mask = uint64_t(buckets - 1);
    parallel_chunks(chunks, threads, [&](int64_t c) {
      int64_t* h = hist.data() + c * buckets;
      for (int64_t i = b + chunks.begin(c); i < b + chunks.end(c); ++i) {
        const int64_t pos = h[(src_keys[i] >> shift) & mask]++;
        dst_keys[pos] = src_keys[i];
        dst_idx[pos] = src_idx[i];
      }
    });
    visit_buckets(starts, threads, [&](int64_t, int64_t s, int64_t e2, int t) { sort(s, e2, 1 - buf, lo, shift, t); });
  }

 private:
  uint64_t* keys_[2];
  RankIndex* idx_[2];

  // sort() of a range that fits in cache, on this thread, without allocating: bucket counts on the stack.
  void sort_small(int64_t b, int64_t e, int buf, int lo, int hi) {
    while (e - b > kInsertionSort && hi > lo) {
      const int width = std::min(kMaxDigitBits, digit_bits(e - b, hi - lo)), shift = hi - width;
      const uint32_t buckets = 1u << width;
      const uint64_t mask = buckets - 1;
      const uint64_t* src_keys = keys_[buf];
      uint32_t ends[(1 << kMaxDigitBits) + 1];
      std::fill(ends, ends + buckets, 0u);
      for (int64_t i = b; i < e; ++i) ++ends[(src_keys[i] >> shift) & mask];
      uint32_t running = 0, largest = 0;
      for (uint32_t d = 0; d < buckets; ++d) {
        largest = std::max(largest, ends[d]);
        const uint32_t count = ends[d];
        ends[d] = running;  // the bucket's next position, relative to b; its end once scattered
        running += count;
      }
      if (largest == e - b) {  // one digit value here: split by the next digit
        hi = shift;
        continue;
      }
      const RankIndex* src_idx = idx_[buf];
      uint64_t* dst_keys = keys_[1 - buf] + b;
      RankIndex* dst_idx = idx_[1 - buf] + b;
      for (int64_t i = b; i < e; ++i) {
        const uint32_t pos = ends[(src_keys[i] >> shift) & mask]++;
        dst_keys[pos] = src_keys[i];
        dst_idx[pos] = src_idx[i];
      }
      for (uint32_t d = 0, start = 0; d < buckets; start = ends[d++])
        if (ends[d] > start) sort_small(b + start, b + ends[d], 1 - buf, lo, shift);
      return;
    }
    insertion_sort(b, e, buf);
  }

  // Sorts a short range (or one of equal keys) by insertion, into buffer 0.
  void insertion_sort(int64_t b, int64_t e, int buf) {
    uint64_t* k = keys_[0];
    RankIndex* ix = idx_[0];
    for (int64_t i = b; i < e; ++i) {
      const uint64_t key = keys_[buf][i];
      const RankIndex id = idx_[buf][i];
      int64_t j = i;
      for (; j > b && k[j - 1] > key; --j) k[j] = k[j - 1], ix[j] = ix[j - 1];
      k[j] = key, ix[j] = id;
    }
  }
};

// Stable ascending order of x into order, and x's keys in that order into sorted (both length n);
// scratch_keys and scratch_idx, when not null, are length-n buffers that the sort may overwrite.
void sort_keys(const double* x, int64_t n, RankIndex* order, uint64_t* sorted, uint64_t* scratch_keys,
               RankIndex* scratch_idx, int threads) {
  if (n == 0) return;
  const Chunks chunks(n, threads);
  std::vector<uint64_t> varying(static_cast<size_t>(chunks.count), 0);
  const uint64_t first = order_key(x[0]);
  parallel_chunks(chunks, threads, [&](int64_t c) {
    uint64_t acc = 0;
    for (int64_t i = chunks.begin(c); i < chunks.end(c); ++i) {
      const uint64_t k = order_key(x[i]);
      sorted[i] = k;
      order[i] = static_cast<RankIndex>(i);
      acc |= k ^ first;
    }
    varying[c] = acc;
  });
  const uint64_t bits = std::accumulate(varying.begin(), varying.end(), uint64_t(0), std::bit_or<uint64_t>());
  if (bits == 0) return;
  std::unique_ptr<Scratch<uint64_t>> own_keys;
  std::unique_ptr<Scratch<RankIndex>> own_idx;
  if (scratch_keys == nullptr) own_keys = std::make_unique<Scratch<uint64_t>>(n), scratch_keys = own_keys->data();
  if (scratch_idx == nullptr) own_idx = std::make_unique<Scratch<RankIndex>>(n), scratch_idx = own_idx->data();
  KeySort(sorted, order, scratch_keys, scratch_idx)
      .sort(0, n, 0, __builtin_ctzll(bits), 64 - __builtin_clzll(bits), threads);
}

// Runs of equal values in a sorted sequence, found in parallel: each chunk owns the runs that start in it
// (finishing them past its end), so every run is handled once, by one thread.
template <typename Equal, typename Run>
void for_each_run(int64_t n, int threads, const Equal& equal_prev, const Run& run) {
  const Chunks chunks(n, threads);
  parallel_chunks(chunks, threads, [&](int64_t c) {
    int64_t i = chunks.begin(c);
    const int64_t stop = chunks.end(c);
    while (i < stop && i > 0 && equal_prev(i)) ++i;  // the run that crosses in belongs to an earlier chunk
    while (i < stop) {
      int64_t j = i + 1;
      while (j < n && equal_prev(j)) ++j;
      run(c, i, j);
      i = j;
    }
  });
}

// Pairs i < j in [s, e) whose digits d = (v >> shift) & mask (at most 4 bits) have d_i > d_j; adds the
// digits' histogram to hist. Blocks of 255 keep, per digit value, the block's earlier elements of greater
// digit in one byte lane each (16 lanes: one SSE2 register), so that each element costs a few vector
// instructions instead of a 16-counter loop; the pairs across blocks come from the blocks' histograms.
template <typename T>
int64_t digit_inversions(const T* v, int64_t s, int64_t e, int shift, uint32_t mask, int64_t* hist) {
  int64_t inversions = 0;
  int64_t earlier_greater[kInvBuckets] = {};  // elements of earlier blocks with a digit above each value
  for (int64_t block = s; block < e; block += 255) {
    const int64_t end = std::min(e, block + 255);
    int64_t counts[kInvBuckets] = {};
#if defined(__SSE2__)
    const __m128i lanes = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m128i greater = _mm_setzero_si128(), sums = _mm_setzero_si128();
    for (int64_t i = block; i < end; ++i) {
      const uint32_t d = static_cast<uint32_t>(v[i] >> shift) & mask;
      ++counts[d];
      const __m128i digit = _mm_set1_epi8(static_cast<char>(d));
      const __m128i mine = _mm_and_si128(greater, _mm_cmpeq_epi8(lanes, digit));
      sums = _mm_add_epi64(sums, _mm_sad_epu8(mine, _mm_setzero_si128()));
      greater = _mm_sub_epi8(greater, _mm_cmplt_epi8(lanes, digit));  // +1 in the lanes below d
    }
    inversions += _mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
#else
    uint32_t greater[kInvBuckets] = {};
    for (int64_t i = block; i < end; ++i) {
      const uint32_t d = static_cast<uint32_t>(v[i] >> shift) & mask;
      ++counts[d];
      inversions += greater[d];
      for (uint32_t b = 0; b < kInvBuckets; ++b) greater[b] += b < d;
    }
#endif
    int64_t above = 0;
    for (int d = kInvBuckets - 1; d >= 0; --d) {
      inversions += counts[d] * earlier_greater[d];
      earlier_greater[d] += above;
      above += counts[d];
      hist[d] += counts[d];
    }
  }
  return inversions;
}

struct PairCounts {
  int64_t inversions = 0;  // pairs i < j with v[i] > v[j]
  int64_t ties = 0;        // pairs with v[i] == v[j]
  PairCounts& operator+=(const PairCounts& o) {
    inversions += o.inversions, ties += o.ties;
    return *this;
  }
};

// Inversions and ties of a sequence of unsigned keys by MSD radix on 4-bit digits, with a scratch buffer
// (the keys are left partly sorted in either buffer). Keys are compared on their bits from `lo` up: the
// bits below lo must be equal in all keys.
template <typename T>
class Inversions {
 public:
  Inversions(T* v, T* scratch, int lo) : buf_{v, scratch}, lo_(lo) {}

  // Pair counts of [b, e) of buffer `buf`, whose keys are equal in the bits at and above `top`.
  PairCounts count(int64_t b, int64_t e, int buf, int top, int threads) {
    if (e - b <= kLarge || top <= lo_) return count_small(b, e, buf, top);
    const T* v = buf_[buf];
    const int shift = std::max(lo_, top - kInvBits);
    const uint32_t mask = (1u << (top - shift)) - 1;
    const Chunks chunks(e - b, threads);
    std::vector<int64_t> hist(static_cast<size_t>(chunks.count * kInvBuckets), 0), inv(hist.size() / kInvBuckets);
    parallel_chunks(chunks, threads, [&](int64_t c) {
      inv[c] = digit_inversions(v, b + chunks.begin(c), b + chunks.end(c), shift, mask, hist.data() + c * kInvBuckets);
    });
    // Pairs within chunks, then across chunks from their histograms; then each chunk's bucket positions.
    PairCounts total;
    int64_t above[kInvBuckets] = {};
    for (int64_t c = 0; c < chunks.count; ++c) {
      total.inversions += inv[c];
      int64_t greater = 0;
      for (int d = kInvBuckets - 1; d >= 0; --d) {
        total.inversions += greater * hist[c * kInvBuckets + d];
        greater += above[d];
      }
      for (int d = 0; d < kInvBuckets; ++d) above[d] += hist[c * kInvBuckets + d];
    }
    if (shift == lo_) {  // the last digit: keys in one bucket are equal
      for (int d = 0; d < kInvBuckets; ++d) total.ties += above[d] * (above[d] - 1) / 2;
      return total;
    }
    std::vector<int64_t> starts(kInvBuckets + 1);
    int64_t running = b;
    for (int d = 0; d < kInvBuckets; ++d) {
      starts[d] = running;
      for (int64_t c = 0; c < chunks.count; ++c) {
        const int64_t count = hist[c * kInvBuckets + d];
        hist[c * kInvBuckets + d] = running;
        running += count;
      }
      if (running - starts[d] == e - b) return count(b, e, buf, shift, threads);  // one digit value here
    }
    starts[kInvBuckets] = e;
    T* dst = buf_[1 - buf];
    parallel_chunks(chunks, threads, [&](int64_t c) {
      int64_t* next = hist.data() + c * kInvBuckets;
      for (int64_t i = b + chunks.begin(c); i < b + chunks.end(c); ++i) dst[next[(v[i] >> shift) & mask]++] = v[i];
    });
    PairCounts parts[kInvBuckets];
    visit_buckets(starts, threads,
                  [&](int64_t d, int64_t s, int64_t e2, int t) { parts[d] = count(s, e2, 1 - buf, shift, t); });
    for (const PairCounts& part : parts) total += part;
    return total;
  }

 private:
  T* buf_[2];
  int lo_;

  // count() of a range that fits in cache, on this thread, without allocating.
  PairCounts count_small(int64_t b, int64_t e, int buf, int top) {
    PairCounts total;
    while (e - b > kInsertionSort && top > lo_) {
      const T* v = buf_[buf];
      const int shift = std::max(lo_, top - kInvBits);
      const uint32_t mask = (1u << (top - shift)) - 1;
      int64_t next[kInvBuckets] = {};
      total.inversions += digit_inversions(v, b, e, shift, mask, next);
      if (shift == lo_) {
        for (int64_t c : next) total.ties += c * (c - 1) / 2;
        return total;
      }
      if (*std::max_element(next, next + kInvBuckets) == e - b) {  // one digit value here
        top = shift;
        continue;
      }
      int64_t starts[kInvBuckets + 1], running = b;
      for (int d = 0; d < kInvBuckets; ++d) starts[d] = running, running += next[d], next[d] = starts[d];
      starts[kInvBuckets] = e;
      T* dst = buf_[1 - buf];
      for (int64_t i = b; i < e; ++i) dst[next[(v[i] >> shift) & mask]++] = v[i];
      for (int d = 0; d < kInvBuckets; ++d) total += count_small(starts[d], starts[d + 1], 1 - buf, shift);
      return total;
    }
    if (top <= lo_) {  // all equal
      total.ties += (e - b) * (e - b - 1) / 2;
      return total;
    }
    return total += insertion_counts(buf_[buf] + b, e - b);
  }

  // Pair counts of a short range, sorting it by insertion.
  static PairCounts insertion_counts(T* a, int64_t len) {
    PairCounts counts;
    for (int64_t i = 1; i < len; ++i) {
      const T value = a[i];
      int64_t j = i;
      for (; j > 0 && a[j - 1] > value; --j) a[j] = a[j - 1];
      a[j] = value;
      counts.inversions += i - j;
    }
    for (int64_t i = 1, run = 1; i <= len; ++i) {
      if (i < len && a[i] == a[i - 1]) {
        ++run;
        continue;
      }
      counts.ties += run * (run - 1) / 2;
      run = 1;
    }
    return counts;
  }
};

}  // namespace

TieCounts rank_cpu(const double* x, int64_t n, RankIndex* order, RankIndex* ranks2, int threads) {
  TieCounts counts{0, 0};
  if (n <= 0) return counts;
  prefault(order, sizeof(RankIndex) * n);
  prefault(ranks2, sizeof(RankIndex) * n);
  Scratch<uint64_t> sorted(n);
  // ranks2 is written after the sort: until then it is the sort's scratch (fresh pages cost as much as a
  // pass over them to fault in).
  sort_keys(x, n, order, sorted.data(), nullptr, ranks2, threads);
  const Chunks chunks(n, threads);
  std::vector<int64_t> groups(static_cast<size_t>(chunks.count), 0), tie_pairs(groups.size(), 0);
  for_each_run(
      n, threads, [&](int64_t i) { return sorted[i] == sorted[i - 1]; },
      [&](int64_t c, int64_t s, int64_t e) {
        const RankIndex doubled = static_cast<RankIndex>(s + e + 1);  // twice the mean of ranks s+1 .. e
        for (int64_t p = s; p < e; ++p) {
          if (p + kPrefetch < n) __builtin_prefetch(ranks2 + order[p + kPrefetch], 1);
          ranks2[order[p]] = doubled;
        }
        ++groups[c];
        tie_pairs[c] += (e - s) * (e - s - 1) / 2;
      });
  counts.groups = std::accumulate(groups.begin(), groups.end(), int64_t(0));
  counts.tie_pairs = std::accumulate(tie_pairs.begin(), tie_pairs.end(), int64_t(0));
  return counts;
}

double spearman_cpu(const double* x, const double* y, int64_t n, int threads) {
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  Scratch<RankIndex> order(n), rx(n), ry(n);
  rank_cpu(x, n, order.data(), rx.data(), threads);
  rank_cpu(y, n, order.data(), ry.data(), threads);
  // Doubled centred ranks 2r - (n + 1) are integers below n in size; their sums of products are exact in
  // 128 bits (n^3 overflows 64 bits from n of about 2 million).
  const Chunks chunks(n, threads);
  std::vector<__int128> sums(static_cast<size_t>(3 * chunks.count));
  parallel_chunks(chunks, threads, [&](int64_t c) {
    __int128 sxy = 0, sxx = 0, syy = 0;
    for (int64_t i = chunks.begin(c); i < chunks.end(c); ++i) {
      const int64_t a = int64_t(rx[i]) - (n + 1), b = int64_t(ry[i]) - (n + 1);
      sxy += static_cast<__int128>(a) * b;
      sxx += static_cast<__int128>(a) * a;
      syy += static_cast<__int128>(b) * b;
    }
    sums[3 * c] = sxy, sums[3 * c + 1] = sxx, sums[3 * c + 2] = syy;
  });
  __int128 sxy = 0, sxx = 0, syy = 0;
  for (int64_t c = 0; c < chunks.count; ++c) sxy += sums[3 * c], sxx += sums[3 * c + 1], syy += sums[3 * c + 2];
  if (sxx == 0 || syy == 0) return std::numeric_limits<double>::quiet_NaN();
  const long double r = static_cast<long double>(sxy) / std::sqrt(static_cast<long double>(sxx)) /
                        std::sqrt(static_cast<long double>(syy));
  return static_cast<double>(std::clamp(r, -1.0L, 1.0L));
}

KendallCounts kendall_counts_cpu(const RankIndex* order_x, const RankIndex* ranks2_x, const double* y, int64_t n,
                                 int64_t x_ties, int threads) {
  KendallCounts counts{n * (n - 1) / 2, x_ties, 0, 0, 0};
  if (n < 2) return counts;
  // y's keys in x's ascending order, and x's ranks beside them (runs of tied x).
  Scratch<uint64_t> seq(n);
  Scratch<RankIndex> gx(n);
  const Chunks chunks(n, threads);
  const uint64_t first = order_key(y[order_x[0]]);
  std::vector<uint64_t> varying(static_cast<size_t>(chunks.count), 0);
  parallel_chunks(chunks, threads, [&](int64_t c) {
    uint64_t acc = 0;
    for (int64_t i = chunks.begin(c); i < chunks.end(c); ++i) {
      if (i + kPrefetch < n) {
        __builtin_prefetch(y + order_x[i + kPrefetch]);
        __builtin_prefetch(ranks2_x + order_x[i + kPrefetch]);
      }
      const RankIndex k = order_x[i];
      seq[i] = order_key(y[k]);
      gx[i] = ranks2_x[k];
      acc |= seq[i] ^ first;
    }
    varying[c] = acc;
  });
  // Sort each run of tied x by y (the order Knight's algorithm sorts by), and count the pairs tied in both.
  std::vector<int64_t> joint(static_cast<size_t>(chunks.count), 0);
  for_each_run(
      n, threads, [&](int64_t i) { return gx[i] == gx[i - 1]; },
      [&](int64_t c, int64_t s, int64_t e) {
        if (e - s < 2) return;
        uint64_t* run = seq.data() + s;
        std::sort(run, run + (e - s));
        for (int64_t i = 1, same = 1; i <= e - s; ++i) {
          if (i < e - s && run[i] == run[i - 1]) {
            ++same;
            continue;
          }
          joint[c] += same * (same - 1) / 2;
          same = 1;
        }
      });
  counts.joint_ties = std::accumulate(joint.begin(), joint.end(), int64_t(0));
  // Discordant pairs are the inversions of y in that order; its ties are y's.
  const uint64_t bits = std::accumulate(varying.begin(), varying.end(), uint64_t(0), std::bit_or<uint64_t>());
  const int lo = bits ? __builtin_ctzll(bits) : 0, hi = bits ? 64 - __builtin_clzll(bits) : 0;
  Scratch<uint64_t> scratch(n);
  const PairCounts pairs = Inversions<uint64_t>(seq.data(), scratch.data(), lo).count(0, n, 0, hi, threads);
  counts.discordant = pairs.inversions;
  counts.y_ties = pairs.ties;
  return counts;
}

}  // namespace pozfast
