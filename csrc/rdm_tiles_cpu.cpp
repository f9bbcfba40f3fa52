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
  // Per row and column: the mean term s / sqrt(k) and 1 / sqrt(variance); invalid rows get 0 and a flag.
  auto prepare = [&](const double* s, const double* q, int64_t len, auto& m, auto& inv, auto& valid) {
    m.resize(len);
    inv.resize(len);
    valid.resize(len);
    for (int64_t t = 0; t < len; ++t) {
      const double v = q[t] - s[t] * s[t] / a.k;
      const bool ok = v > a.eps * q[t] && v > 0;
      m[t] = s[t] / std::sqrt(a.k);
      inv[t] = ok ? 1.0 / std::sqrt(v) : 0.0;
      valid[t] = ok ? 1.0 : 0.0;
    }
  };
  std::vector<double> mr, ir, vr;
  std::vector<T> mc, ic, vc;
  prepare(a.s_rows, a.q_rows, a.rows, mr, ir, vr);
  prepare(a.s_cols, a.q_cols, a.cols, mc, ic, vc);
  // Sums of r and of the reference value u over valid pairs; x = 1 - r and y = u (or 1 - u for a
  // Gram reference) are applied to the sums at the end, which keeps the pair loop short.
  const T u_shift = a.ref_mode == 1 ? T(0) : T(1);  // dissimilarities sit near 1, Gram entries near 0
  // Per-row sums, added up in row order afterwards: the result does not depend on the thread count
  // or schedule (two runs give identical bits).
  std::vector<double> per_row(static_cast<size_t>(a.rows) * 6, 0.0);
#ifdef POZFAST_OPENMP
#pragma omp parallel for schedule(dynamic, 8) if (a.rows * a.cols > (int64_t(1) << 14))
#endif
  for (int64_t r = 0; r < a.rows; ++r) {
    if (vr[r] == 0.0) continue;
    const int64_t i = a.i0 + r;
    const int64_t c0 = std::max<int64_t>(0, i + 1 - a.j0);
    if (c0 >= a.cols) continue;
    const T* grow = g + r * a.ldg;
    const T* urow = a.ref_mode == 2 ? ref + condensed_index(i, a.j0 + c0, a.n) - c0 : ref + r * a.ldr;
    // Per-pair work in T (float tiles: twice the vector lanes), per-row sums in T, totals in float64.
    // The values summed are r in [-1, 1] and u shifted by u_shift to sit near 0, so float row sums
    // over at most a tile's columns do not cancel.
    const T mi = T(mr[r]), invi = T(ir[r]);
    const T* mcp = mc.data();
    const T* icp = ic.data();
    const T* vcp = vc.data();
    T rn = 0, rsr = 0, rsu = 0, rsrr = 0, rsuu = 0, rsru = 0;
#pragma omp simd reduction(+ : rn, rsr, rsu, rsrr, rsuu, rsru)
    for (int64_t c = c0; c < a.cols; ++c) {
      const T u0 = urow[c] - u_shift;
      const bool ok = vcp[c] != T(0) && u0 == u0;  // u0 == u0: not NaN
      const T rho = ok ? (grow[c] - mi * mcp[c]) * (invi * icp[c]) : T(0);
      const T u = ok ? u0 : T(0);
      rn += ok ? T(1) : T(0);
      rsr += rho;
      rsu += u;
      rsrr += rho * rho;
      rsuu += u * u;
      rsru += rho * u;
    }
    double* row = per_row.data() + 6 * r;
    row[0] = rn;
    row[1] = rsr;
    row[2] = rsu;
    row[3] = rsrr;
    row[4] = rsuu;
    row[5] = rsru;
  }
  double n = 0, sr = 0, su = 0, srr = 0, suu = 0, sru = 0;
  for (int64_t r = 0; r < a.rows; ++r) {
    const double* row = per_row.data() + 6 * r;
    n += row[0];
    sr += row[1];
    su += row[2];
    srr += row[3];
    suu += row[4];
    sru += row[5];
  }
  // x = 1 - r;  y = 1 - u for a Gram reference, else y = u + u_shift = u + 1.
  const double sx = n - sr, sxx = n - 2 * sr + srr;
  const double sign = a.ref_mode == 1 ? -1.0 : 1.0;  // y = 1 + sign * u
  const double sy = n + sign * su, syy = n + 2 * sign * su + suu;
  const double sxy = n + sign * su - sr - sign * sru;
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
