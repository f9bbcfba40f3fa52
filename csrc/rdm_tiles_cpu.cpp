// CPU (OpenMP) RDM tile epilogues: condensed packing and fused Pearson pair sums. One pass over a
// tile that is still in cache from the GEMM that produced it.
#include <cmath>
#include <limits>
#include <vector>

#include "rdm_tiles.h"

namespace pozfast {
namespace {

inline int64_t condensed_index(int64_t i, int64_t j, int64_t n) { return i * n - i * (i + 1) / 2 + (j - i - 1); }

template <typename T>
void pack(const T* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n,
          const uint8_t* bad, T* out) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
#ifdef POZFAST_OPENMP
#pragma omp parallel for schedule(static) if (rows * cols > (int64_t(1) << 16))
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    const int64_t c0 = std::max<int64_t>(0, i + 1 - j0);
    if (c0 >= cols) continue;
    T* dst = out + condensed_index(i, j0 + c0, n) - c0;
    const T* src = tile + r * ldg;
    if (bad[i]) {
      for (int64_t c = c0; c < cols; ++c) dst[c] = nan;
      continue;
    }
    const uint8_t* bad_cols = bad + j0;
#pragma omp simd
    for (int64_t c = c0; c < cols; ++c) dst[c] = bad_cols[c] ? nan : T(1) - src[c];
  }
}

template <typename T>
void moments(const PairMomentsArgs& a, double* out) {
  const T* g = static_cast<const T*>(a.gram);
  const T* ref = static_cast<const T*>(a.ref);
  // Per row and column: the mean term s / sqrt(k) and 1 / sqrt(variance), 0 for invalid rows.
  auto prepare = [&](const double* s, const double* q, int64_t len, std::vector<double>& m, std::vector<double>& inv) {
    m.resize(len);
    inv.resize(len);
    for (int64_t t = 0; t < len; ++t) {
      const double v = q[t] - s[t] * s[t] / a.k;
      const bool ok = v > a.eps * q[t] && v > 0;
      m[t] = s[t] / std::sqrt(a.k);
      inv[t] = ok ? 1.0 / std::sqrt(v) : 0.0;
    }
  };
  std::vector<double> mr, ir, mc, ic;
  prepare(a.s_rows, a.q_rows, a.rows, mr, ir);
  prepare(a.s_cols, a.q_cols, a.cols, mc, ic);
  double n = 0, sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
#ifdef POZFAST_OPENMP
#pragma omp parallel for schedule(dynamic, 8) reduction(+ : n, sx, sy, sxx, syy, sxy) if (a.rows * a.cols > (int64_t(1) << 14))
#endif
  for (int64_t r = 0; r < a.rows; ++r) {
    if (ir[r] == 0.0) continue;
    const int64_t i = a.i0 + r;
    const int64_t c0 = std::max<int64_t>(0, i + 1 - a.j0);
    const T* grow = g + r * a.ldg;
    const T* yrow = a.ref_mode == 2 ? (c0 < a.cols ? ref + condensed_index(i, a.j0 + c0, a.n) - c0 : ref)
                                    : ref + r * a.ldr;
    const double sign = a.ref_mode == 1 ? -1.0 : 1.0;
    const double offset = a.ref_mode == 1 ? 1.0 : 0.0;
    const double mi = mr[r], invi = ir[r];
#pragma omp simd reduction(+ : n, sx, sy, sxx, syy, sxy)
    for (int64_t c = c0; c < a.cols; ++c) {
      const double y = offset + sign * double(yrow[c]);
      const bool ok = ic[c] != 0.0 && !std::isnan(y);
      const double x = 1.0 - (double(grow[c]) - mi * mc[c]) * invi * ic[c];
      const double w = ok ? 1.0 : 0.0;
      const double xw = ok ? x : 0.0, yw = ok ? y : 0.0;
      n += w;
      sx += xw;
      sy += yw;
      sxx += xw * xw;
      syy += yw * yw;
      sxy += xw * yw;
    }
  }
  out[0] += n;
  out[1] += sx;
  out[2] += sy;
  out[3] += sxx;
  out[4] += syy;
  out[5] += sxy;
}

}  // namespace

void pack_condensed_cpu(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0,
                        int64_t n, const uint8_t* bad, void* out, bool is_double) {
  if (is_double)
    pack(static_cast<const double*>(tile), ldg, rows, cols, i0, j0, n, bad, static_cast<double*>(out));
  else
    pack(static_cast<const float*>(tile), ldg, rows, cols, i0, j0, n, bad, static_cast<float*>(out));
}

void pair_moments_cpu(const PairMomentsArgs& args, double* out) {
  if (args.is_double) moments<double>(args, out);
  else moments<float>(args, out);
}

}  // namespace pozfast
