// RDM tile epilogues: the plain C++ interface shared by the CPU (and later CUDA) sources.
//
// A tile holds the Gram block G[r][c] (row stride ldg) of rows i0 + r and columns j0 + c of an N-row
// data set. Condensed order is scipy's squareform order (condensed_index).
#pragma once
#include <cstdint>

#include "host_device.h"

namespace pozfast {

// Position of pair (i, j), i < j, in the condensed vector of an n-row data set.
POZFAST_HD inline int64_t condensed_index(int64_t i, int64_t j, int64_t n) {
  return i * n - i * (i + 1) / 2 + (j - i - 1);
}

// Where pair_moments reads the reference y of a pair; the values are those pozfast/ops/rdm_tiles.py passes.
enum class RefMode : int {
  Dissimilarity = 0,  // y = ref tile (row stride ldr)
  Gram = 1,           // y = 1 - ref tile, a Gram tile of normalised rows
  Condensed = 2,      // y = ref[condensed_index(i, j, n)]
};

// Pearson tiles to condensed dissimilarities: out[idx(i, j)] = 1 - tile[r][c] for every j > i in the
// tile; NaN where bad[i] or bad[j] (zero-variance rows). is_double selects float64 buffers.
void pack_condensed_cpu(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0,
                        int64_t n, const uint8_t* bad, void* out, bool is_double);

// Sums over the tile's pairs (j > i) of x = 1 - r and a reference y, for Pearson comparisons:
// moments = {n, sum x, sum y, sum x^2, sum y^2, sum x*y}, accumulated in float64 (added to).
//   r = (G - s_i s_j / k) / sqrt(v_i v_j), v = q - s^2 / k; rows with v <= eps * q are skipped
//   (zero variance). Plain Pearson tiles pass s = 0, q = 1, k = 1.
//   The reference y as ref_mode says; pairs whose y is NaN are skipped.
struct PairMomentsArgs {
  const void* gram;
  int64_t ldg, rows, cols, i0, j0, n;
  const double* s_rows;
  const double* q_rows;
  const double* s_cols;
  const double* q_cols;
  double k, eps;
  const void* ref;
  int64_t ldr;
  RefMode ref_mode;
  bool is_double;
};
void pair_moments_cpu(const PairMomentsArgs& args, double* moments);

#ifdef POZFAST_WITH_CUDA
// The same on device buffers, launched on `stream`; return a cudaError_t value (0 on success).
// pair_moments_cuda adds into the 6 doubles at `moments` (device memory) and needs 2 * (rows + cols)
// doubles of device scratch.
int pack_condensed_cuda(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n,
                        const uint8_t* bad, void* out, bool is_double, void* stream);
int pair_moments_cuda(const PairMomentsArgs& args, double* scratch, double* moments, void* stream);
#endif

}  // namespace pozfast
