// RDM tile epilogues: the plain C++ interface shared by the CPU (and later CUDA) sources.
//
// A tile holds the Gram block G[r][c] (row stride ldg) of rows i0 + r and columns j0 + c of an N-row
// data set. Condensed order is scipy's squareform order: pair (i, j), i < j, sits at
// i*N - i*(i+1)/2 + (j - i - 1).
#pragma once
#include <cstdint>

namespace pozfast {

// Pearson tiles to condensed dissimilarities: out[idx(i, j)] = 1 - tile[r][c] for every j > i in the
// tile; NaN where bad[i] or bad[j] (zero-variance rows). is_double selects float64 buffers.
void pack_condensed_cpu(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0,
                        int64_t n, const uint8_t* bad, void* out, bool is_double);

// Sums over the tile's pairs (j > i) of x = 1 - r and a reference y, for Pearson comparisons:
// moments = {n, sum x, sum y, sum x^2, sum y^2, sum x*y}, accumulated in float64 (added to).
//   r = (G - s_i s_j / k) / sqrt(v_i v_j), v = q - s^2 / k; rows with v <= eps * q are skipped
//   (zero variance). Plain Pearson tiles pass s = 0, q = 1, k = 1.
//   The reference: ref_mode 0: y = ref tile (dissimilarities, row stride ldr);
//   1: y = 1 - ref tile (a Gram tile of normalised rows); 2: y = ref[idx(i, j)] of a condensed vector.
//   Pairs whose y is NaN are skipped.
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
  int ref_mode;
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
