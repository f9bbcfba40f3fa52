// Fused ReLU + per-channel zero count: the plain C++ interface shared by the CPU and CUDA sources.
//
// A dense tensor is seen as [outer, channels, inner] in memory order (contiguous NCHW: outer = N,
// inner = H*W; channels_last or (N, L, C): inner = 1). y may alias x (in place). counts[channels]
// is overwritten with the number of y elements equal to zero (-0.0 included, NaN excluded).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pozfast {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Runs on at most `threads` OpenMP threads (the caller passes torch.get_num_threads()); returns how many ran.
int relu_count_cpu(const void* x, void* y, int64_t* counts, int64_t outer, int64_t channels, int64_t inner,
                   DType dtype, int threads);

// The CPU kernel builds compiled in, one per instruction set ("avx512", "avx2", "default"; "native" when
// built for the build machine), widest first, each with whether this CPU can run it.
std::vector<std::pair<std::string, bool>> cpu_isas();
// The build relu_count_cpu uses: the widest that this CPU runs, unless set_cpu_isa chose another.
const char* cpu_isa();
// Use the named build from now on; std::invalid_argument if it is not compiled in or this CPU cannot run it.
void set_cpu_isa(const std::string& name);

#ifdef POZFAST_WITH_CUDA
// Launches on `stream` (a cudaStream_t); returns a cudaError_t value (0 on success). `clear`: relu(-0.0) is
// +0.0, as torch's CUDA relu gives it in some versions (relu_cuda.h).
int relu_count_cuda(const void* x, void* y, int64_t* counts, int64_t outer, int64_t channels,
                    int64_t inner, DType dtype, bool clear, void* stream);
// Number of visible CUDA devices, or -(cudaError_t) when the runtime cannot be queried.
int cuda_device_count();
// 0 when this build holds kernels that run on `device` (machine code for its architecture, or PTX that the
// driver compiles), else the cudaError_t value (cudaErrorNoKernelImageForDevice when none fits).
int cuda_kernel_image(int device);
const char* cuda_error_string(int code);
#endif

}  // namespace pozfast
