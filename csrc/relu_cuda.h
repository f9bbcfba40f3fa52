// torch.relu's element rule on CUDA, for the CUDA kernels (relu_elem.h holds the CPU's).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace pozfast {

// torch.relu on CUDA is clamp_min: NaN as it is, else ::max(v, 0) computed in float (the 16-bit types through
// float). The same max instruction here gives the same bits, the sign of a zero included, which the CPU's
// `x < 0 ? 0 : x` (relu_elem.h) need not: CUDA follows torch's CUDA code, the CPU torch's CPU code.
template <typename T>
struct CudaReluFloat {
  using Elem = T;
  static __device__ __forceinline__ T relu(T x) { return isnan(x) ? x : ::max(x, T(0)); }
  static __device__ __forceinline__ bool is_zero(T y) { return y == T(0); }
};

template <typename H, float (*ToFloat)(H), H (*FromFloat)(float)>
struct CudaReluHalf {
  using Elem = uint16_t;
  static __device__ __forceinline__ uint16_t relu(uint16_t b) {
    H h;
    memcpy(&h, &b, sizeof b);
    const float f = ToFloat(h);
    if (isnan(f)) return b;
    const H r = FromFloat(::max(f, 0.f));
    uint16_t out;
    memcpy(&out, &r, sizeof out);
    return out;
  }
  static __device__ __forceinline__ bool is_zero(uint16_t y) { return (y & 0x7fffu) == 0; }
};

__device__ __forceinline__ float half_to_float(__half h) { return __half2float(h); }
__device__ __forceinline__ __half float_to_half(float f) { return __float2half_rn(f); }
__device__ __forceinline__ float bf16_to_float(__nv_bfloat16 h) { return __bfloat162float(h); }
__device__ __forceinline__ __nv_bfloat16 float_to_bf16(float f) { return __float2bfloat16_rn(f); }

using CudaReluF32 = CudaReluFloat<float>;
using CudaReluF64 = CudaReluFloat<double>;
using CudaReluF16 = CudaReluHalf<__half, half_to_float, float_to_half>;
using CudaReluBF16 = CudaReluHalf<__nv_bfloat16, bf16_to_float, float_to_bf16>;

}  // namespace pozfast
