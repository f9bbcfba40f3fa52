// Python bindings of pozfast._C. Tensors arrive as raw pointers and sizes (and a CUDA stream handle):
// the module does not link libtorch, so one build serves any torch version.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "relu_count.h"

namespace py = pybind11;

namespace {

pozfast::DType to_dtype(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("pozfast._C: unknown dtype code " + std::to_string(code));
  return static_cast<pozfast::DType>(code);
}

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pozfast native kernels (CPU/OpenMP and, when compiled in, CUDA)";

  m.def(
      "relu_count_cpu",
      [](uintptr_t x, uintptr_t y, uintptr_t counts, int64_t outer, int64_t channels, int64_t inner, int dtype) {
        const auto dt = to_dtype(dtype);
        py::gil_scoped_release release;
        pozfast::relu_count_cpu(ptr<const void>(x), ptr<void>(y), ptr<int64_t>(counts), outer, channels, inner, dt);
      },
      py::arg("x"), py::arg("y"), py::arg("counts"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
      py::arg("dtype"));
  m.def("cpu_num_threads", &pozfast::cpu_num_threads);
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
         uintptr_t stream) {
        const auto dt = to_dtype(dtype);
        int err;
        {
          py::gil_scoped_release release;
          err = pozfast::relu_count_cuda(ptr<const void>(x), ptr<void>(y), ptr<int64_t>(counts), outer, channels,
                                         inner, dt, ptr<void>(stream));
        }
        if (err != 0) throw std::runtime_error(std::string("pozfast relu_count CUDA launch failed: ") +
                                               pozfast::cuda_error_string(err));
      },
      py::arg("x"), py::arg("y"), py::arg("counts"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
      py::arg("dtype"), py::arg("stream"));
  m.def("cuda_device_count", &pozfast::cuda_device_count);
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = std::string(POZFAST_CUDA_ARCHS);
}
