// Python bindings of pozfast._C. Tensors arrive as raw pointers and sizes (and a CUDA stream handle):
// the module does not link libtorch, so one build serves any torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "near_zero.h"
#include "ranks.h"
#include "rdm_tiles.h"
#include "relu_count.h"

namespace py = pybind11;

namespace {

pozfast::DType to_dtype(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("pozfast._C: unknown dtype code " + std::to_string(code));
  return static_cast<pozfast::DType>(code);
}

pozfast::RefMode to_ref_mode(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("pozfast._C: ref_mode must be 0, 1 or 2");
  return static_cast<pozfast::RefMode>(code);
}

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

pozfast::NearZeroArgs near_zero_args(uintptr_t x, uintptr_t y, uintptr_t counts, int64_t outer, int64_t channels,
                                     int64_t inner, uintptr_t mask, int64_t repeat,
                                     const std::vector<int64_t>& keys, int dtype) {
  if (keys.empty() || keys.size() > size_t(pozfast::kMaxThresholds))
    throw std::invalid_argument("pozfast._C: 1 to " + std::to_string(pozfast::kMaxThresholds) +
                                " threshold keys, got " + std::to_string(keys.size()));
  pozfast::NearZeroArgs args{ptr<const void>(x), ptr<void>(y), ptr<int64_t>(counts), outer, channels, inner,
                             ptr<const uint8_t>(mask), repeat, int(keys.size()), {}, to_dtype(dtype)};
  for (size_t t = 0; t < keys.size(); ++t) args.keys[t] = keys[t];
  return args;
}

#ifdef POZFAST_WITH_CUDA
void check_cuda(int err, const char* what) {
  if (err != 0)
    throw std::runtime_error(std::string("pozfast ") + what + " CUDA launch failed: " + pozfast::cuda_error_string(err));
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pozfast native kernels (CPU/OpenMP and, when compiled in, CUDA)";

  m.def(
      "relu_count_cpu",
      [](uintptr_t x, uintptr_t y, uintptr_t counts, int64_t outer, int64_t channels, int64_t inner, int dtype,
         int threads) {
        const auto dt = to_dtype(dtype);
        py::gil_scoped_release release;
        return pozfast::relu_count_cpu(ptr<const void>(x), ptr<void>(y), ptr<int64_t>(counts), outer, channels,
                                       inner, dt, threads);
      },
      py::arg("x"), py::arg("y"), py::arg("counts"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
      py::arg("dtype"), py::arg("threads"), "Returns the number of threads that ran.");
  m.def(
      "near_zero_count_cpu",
      [](uintptr_t x, uintptr_t y, uintptr_t counts, int64_t outer, int64_t channels, int64_t inner, uintptr_t mask,
         int64_t repeat, const std::vector<int64_t>& keys, int dtype, int threads) {
        const auto args = near_zero_args(x, y, counts, outer, channels, inner, mask, repeat, keys, dtype);
        py::gil_scoped_release release;
        return pozfast::near_zero_count_cpu(args, threads);
      },
      py::arg("x"), py::arg("y"), py::arg("counts"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
      py::arg("mask"), py::arg("repeat"), py::arg("keys"), py::arg("dtype"), py::arg("threads"),
      "Adds near-zero counts to counts [len(keys), channels]; y = 0 counts only, mask = 0 counts every row. "
      "Returns the number of threads that ran.");
  m.def("cpu_isas", &pozfast::cpu_isas,
        "[(name, runs on this CPU)] of the compiled CPU kernel builds, widest first.");
  m.def("cpu_isa", &pozfast::cpu_isa, "The CPU kernel build in use.");
  m.def("set_cpu_isa", &pozfast::set_cpu_isa, py::arg("name"),
        "Use the named CPU kernel build from now on (ValueError if absent or this CPU cannot run it).");

  m.def(
      "pack_condensed_cpu",
      [](uintptr_t tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n, uintptr_t bad,
         uintptr_t out, bool is_double) {
        py::gil_scoped_release release;
        pozfast::pack_condensed_cpu(ptr<const void>(tile), ldg, rows, cols, i0, j0, n, ptr<const uint8_t>(bad),
                                    ptr<void>(out), is_double);
      },
      py::arg("tile"), py::arg("ldg"), py::arg("rows"), py::arg("cols"), py::arg("i0"), py::arg("j0"), py::arg("n"),
      py::arg("bad"), py::arg("out"), py::arg("is_double"));
  m.def(
      "pair_moments_cpu",
      [](uintptr_t gram, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n, uintptr_t s_rows,
         uintptr_t q_rows, uintptr_t s_cols, uintptr_t q_cols, double k, double eps, uintptr_t ref, int64_t ldr,
         int ref_mode, bool is_double) {
        const pozfast::PairMomentsArgs args{ptr<const void>(gram), ldg, rows, cols, i0, j0, n,
                                            ptr<const double>(s_rows), ptr<const double>(q_rows),
                                            ptr<const double>(s_cols), ptr<const double>(q_cols), k, eps,
                                            ptr<const void>(ref), ldr, to_ref_mode(ref_mode), is_double};
        double out[6] = {0, 0, 0, 0, 0, 0};
        {
          py::gil_scoped_release release;
          pozfast::pair_moments_cpu(args, out);
        }
        return py::make_tuple(out[0], out[1], out[2], out[3], out[4], out[5]);
      },
      py::arg("gram"), py::arg("ldg"), py::arg("rows"), py::arg("cols"), py::arg("i0"), py::arg("j0"), py::arg("n"),
      py::arg("s_rows"), py::arg("q_rows"), py::arg("s_cols"), py::arg("q_cols"), py::arg("k"), py::arg("eps"),
      py::arg("ref"), py::arg("ldr"), py::arg("ref_mode"), py::arg("is_double"));
  m.def(
      "rank_cpu",
      [](uintptr_t x, int64_t n, uintptr_t order, uintptr_t ranks2, int threads) {
        pozfast::TieCounts counts;
        {
          py::gil_scoped_release release;
          counts = pozfast::rank_cpu(ptr<const double>(x), n, ptr<pozfast::RankIndex>(order),
                                     ptr<pozfast::RankIndex>(ranks2), threads);
        }
        return py::make_tuple(counts.groups, counts.tie_pairs);
      },
      py::arg("x"), py::arg("n"), py::arg("order"), py::arg("ranks2"), py::arg("threads"),
      "Ascending order (uint32) and doubled average ranks (uint32) of float64 x[n], n < 2^31; returns "
      "(distinct values, tied pairs).");
  m.def(
      "spearman_cpu",
      [](uintptr_t x, uintptr_t y, int64_t n, int threads) {
        py::gil_scoped_release release;
        return pozfast::spearman_cpu(ptr<const double>(x), ptr<const double>(y), n, threads);
      },
      py::arg("x"), py::arg("y"), py::arg("n"), py::arg("threads"));
  m.def(
      "kendall_counts_cpu",
      [](uintptr_t order_x, uintptr_t ranks2_x, uintptr_t y, int64_t n, int64_t x_ties, int threads) {
        pozfast::KendallCounts k;
        {
          py::gil_scoped_release release;
          k = pozfast::kendall_counts_cpu(ptr<const pozfast::RankIndex>(order_x),
                                          ptr<const pozfast::RankIndex>(ranks2_x), ptr<const double>(y), n, x_ties,
                                          threads);
        }
        return py::make_tuple(k.pairs, k.x_ties, k.y_ties, k.joint_ties, k.discordant);
      },
      py::arg("order_x"), py::arg("ranks2_x"), py::arg("y"), py::arg("n"), py::arg("x_ties"), py::arg("threads"),
      "(pairs, x ties, y ties, joint ties, discordant pairs) for Kendall's tau-a, from x's rank_cpu results.");
#ifdef POZFAST_OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif

#ifdef POZFAST_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def(
      "relu_count_cuda",
      [](uintptr_t x, uintptr_t y, uintptr_t counts, int64_t outer, int64_t channels, int64_t inner, int dtype,
         bool clear, uintptr_t stream) {
        const auto dt = to_dtype(dtype);
        int err;
        {
          py::gil_scoped_release release;
          err = pozfast::relu_count_cuda(ptr<const void>(x), ptr<void>(y), ptr<int64_t>(counts), outer, channels,
                                         inner, dt, clear, ptr<void>(stream));
        }
        check_cuda(err, "relu_count");
      },
      py::arg("x"), py::arg("y"), py::arg("counts"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
      py::arg("dtype"), py::arg("clear"), py::arg("stream"));
  m.def(
      "near_zero_count_cuda",
      [](uintptr_t x, uintptr_t y, uintptr_t counts, int64_t outer, int64_t channels, int64_t inner, uintptr_t mask,
         int64_t repeat, const std::vector<int64_t>& keys, int dtype, bool clear, uintptr_t stream) {
        const auto args = near_zero_args(x, y, counts, outer, channels, inner, mask, repeat, keys, dtype);
        int err;
        {
          py::gil_scoped_release release;
          err = pozfast::near_zero_count_cuda(args, clear, ptr<void>(stream));
        }
        check_cuda(err, "near_zero_count");
      },
      py::arg("x"), py::arg("y"), py::arg("counts"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
      py::arg("mask"), py::arg("repeat"), py::arg("keys"), py::arg("dtype"), py::arg("clear"), py::arg("stream"));
  m.def("cuda_device_count", &pozfast::cuda_device_count);
  m.def("cuda_kernel_image", &pozfast::cuda_kernel_image, py::arg("device"),
        "0 when the compiled kernels run on this device, else the CUDA error code.");
  m.def("cuda_error_string", &pozfast::cuda_error_string, py::arg("code"));
  m.def(
      "pack_condensed_cuda",
      [](uintptr_t tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n, uintptr_t bad,
         uintptr_t out, bool is_double, uintptr_t stream) {
        check_cuda(pozfast::pack_condensed_cuda(ptr<const void>(tile), ldg, rows, cols, i0, j0, n,
                                                ptr<const uint8_t>(bad), ptr<void>(out), is_double, ptr<void>(stream)),
                   "pack_condensed");
      });
  m.def(
      "pair_moments_cuda",
      [](uintptr_t gram, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n, uintptr_t s_rows,
         uintptr_t q_rows, uintptr_t s_cols, uintptr_t q_cols, double k, double eps, uintptr_t ref, int64_t ldr,
         int ref_mode, bool is_double, uintptr_t scratch, uintptr_t moments, uintptr_t stream) {
        const pozfast::PairMomentsArgs args{ptr<const void>(gram), ldg, rows, cols, i0, j0, n,
                                            ptr<const double>(s_rows), ptr<const double>(q_rows),
                                            ptr<const double>(s_cols), ptr<const double>(q_cols), k, eps,
                                            ptr<const void>(ref), ldr, to_ref_mode(ref_mode), is_double};
        check_cuda(pozfast::pair_moments_cuda(args, ptr<double>(scratch), ptr<double>(moments), ptr<void>(stream)),
                   "pair_moments");
      });
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = std::string(POZFAST_CUDA_ARCHS);
}
