// torch.relu's element rule on CUDA, for the CUDA kernels: the CPU's (relu_elem.h: NaN as it is, negatives
// to +0.0, -0.0 kept), except that -0.0 becomes +0.0 when `clear`. torch's CUDA relu (clamp_min) has been a
// float max in some versions, whose max(-0.0, 0) is +0.0, and a compare like the CPU's in others: which one
// the installed torch follows is probed per device and dtype (pozfast.ops.relu_count.cuda_relu_clears) and
// passed to every launch, so that y has torch's bits, the sign of a zero included.
#pragma once
#include "relu_elem.h"

namespace pozfast {

template <typename Rule>
struct CudaRelu {
  using Elem = typename Rule::Elem;
  static __device__ __forceinline__ Elem relu(Elem x, bool clear) {
    const Elem y = Rule::relu(x);
    return clear && Rule::is_zero(y) ? Elem(0) : y;
  }
  static __device__ __forceinline__ bool is_zero(Elem y) { return Rule::is_zero(y); }
};

using CudaReluF32 = CudaRelu<ReluF32>;
using CudaReluF64 = CudaRelu<ReluF64>;
using CudaReluF16 = CudaRelu<ReluF16>;
using CudaReluBF16 = CudaRelu<ReluBF16>;

}  // namespace pozfast
