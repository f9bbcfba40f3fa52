// The CPU RDM tile epilogues for one instruction set: condensed packing and fused Pearson pair sums, one
// pass over a tile that is still in cache from the GEMM that produced it. The build compiles this file once
// per set, with POZFAST_ISA naming it and that set's flags. Everything except the exported table has internal
// linkage and no standard-library template is used, so no code compiled here for a wider set can be merged
// by the linker into the baseline's (which must run on any CPU).
#include <cmath>
#include <cstdint>

#include "rdm_tiles.h"
#include "rdm_tiles_isa.h"

#define POZFAST_CAT2(a, b) a##b
#define POZFAST_CAT(a, b) POZFAST_CAT2(a, b)

namespace pozfast {
namespace {

constexpr int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }


template <typename T>
void pack(const T* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n,
          const uint8_t* bad, T* out) {
  const T nan = T(__builtin_nan(""));
#ifdef POZFAST_OPENMP
#pragma omp parallel for schedule(static) if (rows * cols > (int64_t(1) << 16))
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    const int64_t c0 = max64(0, i + 1 - j0);
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
void moments(const PairMomentsArgs& a, double* scratch, double* out) {
  const T* g = static_cast<const T*>(a.gram);
  const T* ref = static_cast<const T*>(a.ref);
  // Per row and column: the mean term s / sqrt(k) and 1 / sqrt(variance); invalid rows get 0 and a flag.
  auto prepare = [&](const double* s, const double* q, int64_t len, double* m, double* inv, double* valid) {
    for (int64_t t = 0; t < len; ++t) {
      const double v = q[t] - s[t] * s[t] / a.k;
      const bool ok = v > a.eps * q[t] && v > 0;
      m[t] = s[t] / std::sqrt(a.k);
      inv[t] = ok ? 1.0 / std::sqrt(v) : 0.0;
      valid[t] = ok ? 1.0 : 0.0;
    }
  };
  double* mr = scratch;
  double* ir = mr + a.rows;
  double* vr = ir + a.rows;
  double* mc = vr + a.rows;
  double* ic = mc + a.cols;
  double* vc = ic + a.cols;
  double* per_row = vc + a.cols;  // 6 * rows
  prepare(a.s_rows, a.q_rows, a.rows, mr, ir, vr);
  prepare(a.s_cols, a.q_cols, a.cols, mc, ic, vc);
  // Sums of r and of the reference value u over valid pairs; x = 1 - r and y = u (or 1 - u for a
  // Gram reference) are applied to the sums at the end, which keeps the pair loop short.
  const double u_shift = a.ref_mode == RefMode::Gram ? 0.0 : 1.0;  // dissimilarities sit near 1, Gram entries near 0
  // Per-row sums, added up in row order afterwards: the result does not depend on the thread count
  // or schedule (two runs give identical bits).
#ifdef POZFAST_OPENMP
#pragma omp parallel for schedule(dynamic, 8) if (a.rows * a.cols > (int64_t(1) << 14))
#endif
  for (int64_t r = 0; r < a.rows; ++r) {
    double* row = per_row + 6 * r;
    for (int t = 0; t < 6; ++t) row[t] = 0.0;
    if (vr[r] == 0.0) continue;
    const int64_t i = a.i0 + r;
    const int64_t c0 = max64(0, i + 1 - a.j0);
    if (c0 >= a.cols) continue;
    const T* grow = g + r * a.ldg;
    const T* urow = a.ref_mode == RefMode::Condensed ? ref + condensed_index(i, a.j0 + c0, a.n) - c0 : ref + r * a.ldr;
    // Per-pair work and sums in float64, as in the CUDA and Triton epilogues: a curve or comparison does
    // not depend on the backend beyond the GEMM's own rounding. The values summed are r in [-1, 1] and u
    // shifted by u_shift to sit near 0, so the row sums do not cancel.
    const double mi = mr[r], invi = ir[r];
    const double* mcp = mc;
    const double* icp = ic;
    const double* vcp = vc;
    double rn = 0, rsr = 0, rsu = 0, rsrr = 0, rsuu = 0, rsru = 0;
#pragma omp simd reduction(+ : rn, rsr, rsu, rsrr, rsuu, rsru)
    for (int64_t c = c0; c < a.cols; ++c) {
      const double u0 = double(urow[c]) - u_shift;
      const bool ok = vcp[c] != 0.0 && u0 == u0;  // u0 == u0: not NaN
      const double rho = ok ? (double(grow[c]) - mi * mcp[c]) * (invi * icp[c]) : 0.0;
      const double u = ok ? u0 : 0.0;
      rn += ok ? 1.0 : 0.0;
      rsr += rho;
      rsu += u;
      rsrr += rho * rho;
      rsuu += u * u;
      rsru += rho * u;
    }
    row[0] = rn;
    row[1] = rsr;
    row[2] = rsu;
    row[3] = rsrr;
    row[4] = rsuu;
    row[5] = rsru;
  }
  double n = 0, sr = 0, su = 0, srr = 0, suu = 0, sru = 0;
  for (int64_t r = 0; r < a.rows; ++r) {
    const double* row = per_row + 6 * r;
    n += row[0];
    sr += row[1];
    su += row[2];
    srr += row[3];
    suu += row[4];
    sru += row[5];
  }
  // x = 1 - r;  y = 1 - u for a Gram reference, else y = u + u_shift = u + 1.
  const double sx = n - sr, sxx = n - 2 * sr + srr;
  const double sign = a.ref_mode == RefMode::Gram ? -1.0 : 1.0;  // y = 1 + sign * u
  const double sy = n + sign * su, syy = n + 2 * sign * su + suu;
  const double sxy = n + sign * su - sr - sign * sru;
  out[0] += n;
  out[1] += sx;
  out[2] += sy;
  out[3] += sxx;
  out[4] += syy;
  out[5] += sxy;
}

void pack_float(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n,
                const uint8_t* bad, void* out) {
  pack(static_cast<const float*>(tile), ldg, rows, cols, i0, j0, n, bad, static_cast<float*>(out));
}

void pack_double(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n,
                 const uint8_t* bad, void* out) {
  pack(static_cast<const double*>(tile), ldg, rows, cols, i0, j0, n, bad, static_cast<double*>(out));
}

}  // namespace

extern const RdmKernels POZFAST_CAT(rdm_kernels_, POZFAST_ISA) = {{pack_float, pack_double},
                                                                  {moments<float>, moments<double>}};

}  // namespace pozfast
