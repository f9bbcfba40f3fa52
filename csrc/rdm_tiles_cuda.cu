// CUDA RDM tile epilogues for Gram tiles produced by a GEMM (cuBLAS through torch): condensed packing
// and the fused Pearson pair sums. Same contracts as the CPU versions (rdm_tiles.h); launched on the
// caller's stream.
#include <cuda_runtime.h>

#include <cmath>

#include "rdm_tiles.h"

namespace pozfast {
namespace {

constexpr int kTile = 16;  // 16 x 16 threads per block, one pair each

template <typename T>
__global__ void pack_kernel(const T* __restrict__ tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0,
                            int64_t j0, int64_t n, const uint8_t* __restrict__ bad, T* __restrict__ out) {
  const int64_t r = int64_t(blockIdx.y) * kTile + threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kTile + threadIdx.x;
  if (r >= rows || c >= cols) return;
  const int64_t i = i0 + r, j = j0 + c;
  if (j <= i) return;
  out[condensed_index(i, j, n)] = (bad[i] || bad[j]) ? T(NAN) : T(1) - tile[r * ldg + c];
}

// Valid-pair sums of r = (G - m_i m_j) * inv_i * inv_j and the reference u, reduced per block in shared
// memory, then one double atomicAdd per sum per block. Rows with zero variance come in with inv = 0.
template <typename T>
__global__ void moments_kernel(PairMomentsArgs a, const double* __restrict__ m_rows, const double* __restrict__ inv_rows,
                               const double* __restrict__ m_cols, const double* __restrict__ inv_cols,
                               double* __restrict__ out) {
  const T* g = static_cast<const T*>(a.gram);
  const T* ref = static_cast<const T*>(a.ref);
  const int64_t r = int64_t(blockIdx.y) * kTile + threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kTile + threadIdx.x;
  double v[6] = {0, 0, 0, 0, 0, 0};
  if (r < a.rows && c < a.cols && a.j0 + c > a.i0 + r && inv_rows[r] != 0.0 && inv_cols[c] != 0.0) {
    const int64_t i = a.i0 + r, j = a.j0 + c;
    const double u = double(a.ref_mode == RefMode::Condensed ? ref[condensed_index(i, j, a.n)] : ref[r * a.ldr + c]);
    if (!isnan(u)) {
      const double x = 1.0 - (double(g[r * a.ldg + c]) - m_rows[r] * m_cols[c]) * inv_rows[r] * inv_cols[c];
      const double y = a.ref_mode == RefMode::Gram ? 1.0 - u : u;
      v[0] = 1;
      v[1] = x;
      v[2] = y;
      v[3] = x * x;
      v[4] = y * y;
      v[5] = x * y;
    }
  }
  __shared__ double partial[6][kTile * kTile];
  const int t = threadIdx.y * kTile + threadIdx.x;
  for (int k = 0; k < 6; ++k) partial[k][t] = v[k];
  __syncthreads();
  for (int stride = kTile * kTile / 2; stride > 0; stride >>= 1) {
    if (t < stride)
      for (int k = 0; k < 6; ++k) partial[k][t] += partial[k][t + stride];
    __syncthreads();
  }
  if (t < 6) atomicAdd(out + t, partial[t][0]);
}

__global__ void prepare_kernel(const double* s, const double* q, int64_t len, double k, double eps, double* m,
                               double* inv) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= len) return;
  const double var = q[t] - s[t] * s[t] / k;
  m[t] = s[t] / sqrt(k);
  inv[t] = (var > eps * q[t] && var > 0) ? 1.0 / sqrt(var) : 0.0;
}

dim3 tile_grid(int64_t rows, int64_t cols) {
  return dim3(static_cast<unsigned>((cols + kTile - 1) / kTile), static_cast<unsigned>((rows + kTile - 1) / kTile));
}

}  // namespace

int pack_condensed_cuda(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n,
                        const uint8_t* bad, void* out, bool is_double, void* stream_handle) {
  auto stream = static_cast<cudaStream_t>(stream_handle);
  if (rows == 0 || cols == 0) return 0;
  const dim3 block(kTile, kTile);
  if (is_double)
    pack_kernel<double><<<tile_grid(rows, cols), block, 0, stream>>>(static_cast<const double*>(tile), ldg, rows, cols,
                                                                      i0, j0, n, bad, static_cast<double*>(out));
  else
    pack_kernel<float><<<tile_grid(rows, cols), block, 0, stream>>>(static_cast<const float*>(tile), ldg, rows, cols,
                                                                     i0, j0, n, bad, static_cast<float*>(out));
  return static_cast<int>(cudaGetLastError());
}

int pair_moments_cuda(const PairMomentsArgs& args, double* scratch, double* moments, void* stream_handle) {
  auto stream = static_cast<cudaStream_t>(stream_handle);
  if (args.rows == 0 || args.cols == 0) return 0;
  double* m_rows = scratch;
  double* inv_rows = scratch + args.rows;
  double* m_cols = scratch + 2 * args.rows;
  double* inv_cols = scratch + 2 * args.rows + args.cols;
  prepare_kernel<<<static_cast<unsigned>((args.rows + 255) / 256), 256, 0, stream>>>(args.s_rows, args.q_rows, args.rows,
                                                                                   args.k, args.eps, m_rows, inv_rows);
  prepare_kernel<<<static_cast<unsigned>((args.cols + 255) / 256), 256, 0, stream>>>(args.s_cols, args.q_cols, args.cols,
                                                                                   args.k, args.eps, m_cols, inv_cols);
  const dim3 block(kTile, kTile);
  if (args.is_double)
    moments_kernel<double><<<tile_grid(args.rows, args.cols), block, 0, stream>>>(args, m_rows, inv_rows, m_cols,
                                                                                  inv_cols, moments);
  else
    moments_kernel<float><<<tile_grid(args.rows, args.cols), block, 0, stream>>>(args, m_rows, inv_rows, m_cols,
                                                                                 inv_cols, moments);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pozfast
