// Rank statistics of NaN-free float64 vectors on CPU threads (OpenMP): a stable argsort with average
// ranks (ties averaged), Spearman's rho and the pair counts of Kendall's tau-a. Plain C++ interface shared
// with the bindings; indices and doubled ranks are uint32 (vectors of fewer than 2^31 entries, checked by
// the caller).
#pragma once
#include <cstdint>

namespace pozfast {

using RankIndex = uint32_t;

struct TieCounts {
  int64_t groups;     // distinct values
  int64_t tie_pairs;  // sum over groups of equal values of t(t-1)/2: the pairs tied in this vector
};

// Ranks x[n] (-0.0 and 0.0 are equal): its stable ascending order into order[n] (a parallel MSD radix
// sort over the key bits that vary), and twice its average ranks into ranks2[n]: integers, 2r for the
// 1-based rank r with ties averaged as scipy.stats.rankdata's "average". n must be below 2^31. Runs on at
// most `threads` threads.
TieCounts rank_cpu(const double* x, int64_t n, RankIndex* order, RankIndex* ranks2, int threads);

// Spearman's rho of x and y: the Pearson correlation of their average ranks, from exact integer sums of
// the doubled centred ranks. NaN when either vector is constant or n < 2.
double spearman_cpu(const double* x, const double* y, int64_t n, int threads);

struct KendallCounts {
  int64_t pairs;       // n(n-1)/2
  int64_t x_ties;      // pairs tied in x
  int64_t y_ties;      // pairs tied in y
  int64_t joint_ties;  // pairs tied in both
  int64_t discordant;  // pairs ordered oppositely by x and y
};

// Pair counts for Kendall's tau-a (Knight's algorithm) of x and y[n], from x's ascending order and
// doubled ranks (rank_cpu) and x_ties, its tie_pairs. tau-a = (pairs - x_ties - y_ties + joint_ties -
// 2 discordant) / pairs.
KendallCounts kendall_counts_cpu(const RankIndex* order_x, const RankIndex* ranks2_x, const double* y, int64_t n,
                                 int64_t x_ties, int threads);

}  // namespace pozfast
