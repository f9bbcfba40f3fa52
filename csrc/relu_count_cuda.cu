// CUDA fused ReLU + per-channel zero count. One pass; 16-byte vector loads and stores where the
// buffers are aligned; each block reduces its partial counts (in registers for row mode, in shared
// memory for short rows) and issues one atomic per channel it touched. Launched on the caller's stream.
#include <cuda_runtime.h>

#include <algorithm>

#include "relu_count.h"
#include "relu_elem.h"

namespace pozfast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kRowModeMinInner = 64;
constexpr int64_t kChunk = 8192;            // elements one block handles per step
constexpr int kMaxSmemChannels = 12 * 1024; // 48 KiB of int32 counters
constexpr int64_t kMaxBlocks = 1 << 20;

template <typename U>
struct alignas(16) Vec {
  static constexpr int kN = 16 / sizeof(U);
  U v[kN];
};

template <typename Op, bool kVector>
__device__ __forceinline__ unsigned relu_span(const typename Op::Elem* __restrict__ x,
                                              typename Op::Elem* __restrict__ y, int64_t begin,
                                              int64_t end) {
  using U = typename Op::Elem;
  using V = Vec<U>;
  unsigned zeros = 0;
  int64_t i = begin;
  if (kVector) {
    const int64_t head = std::min<int64_t>(end, (begin + V::kN - 1) / V::kN * V::kN);
    for (int64_t k = begin + threadIdx.x; k < head; k += blockDim.x) {
      const U v = Op::relu(x[k]);
      y[k] = v;
      zeros += Op::is_zero(v);
    }
    const int64_t body_end = head + (end - head) / V::kN * V::kN;
    for (int64_t k = head + int64_t(threadIdx.x) * V::kN; k < body_end; k += int64_t(blockDim.x) * V::kN) {
      V in = *reinterpret_cast<const V*>(x + k);
      V out;
#pragma unroll
      for (int l = 0; l < V::kN; ++l) {
        out.v[l] = Op::relu(in.v[l]);
        zeros += Op::is_zero(out.v[l]);
      }
      *reinterpret_cast<V*>(y + k) = out;
    }
    i = body_end;
  }
  for (int64_t k = i + threadIdx.x; k < end; k += blockDim.x) {
    const U v = Op::relu(x[k]);
    y[k] = v;
    zeros += Op::is_zero(v);
  }
  return zeros;
}

__device__ __forceinline__ unsigned block_sum(unsigned v) {
  __shared__ unsigned warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  unsigned total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  __syncthreads();
  return total;
}

// Long rows (inner >= kRowModeMinInner): a work item is one chunk of one row, so one channel.
template <typename Op, bool kVector>
__global__ void __launch_bounds__(kThreads) relu_count_rows(const typename Op::Elem* __restrict__ x,
                                                            typename Op::Elem* __restrict__ y,
                                                            unsigned long long* counts,
                                                            int64_t rows, int64_t channels,
                                                            int64_t inner) {
  const int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  for (int64_t item = blockIdx.x; item < rows * chunks_per_row; item += gridDim.x) {
    const int64_t row = item / chunks_per_row;
    const int64_t begin = row * inner + (item % chunks_per_row) * kChunk;
    const int64_t end = std::min(begin + kChunk, (row + 1) * inner);
    const unsigned total = block_sum(relu_span<Op, kVector>(x, y, begin, end));
    if (threadIdx.x == 0 && total) atomicAdd(counts + row % channels, static_cast<unsigned long long>(total));
  }
}

// Short rows (e.g. channels last): elements of one chunk belong to many channels; count them in
// shared memory, then one global atomic per touched channel. Beyond kMaxSmemChannels channels the
// counters go straight to global memory.
template <typename Op, bool kVector>
__global__ void __launch_bounds__(kThreads) relu_count_positions(const typename Op::Elem* __restrict__ x,
                                                                 typename Op::Elem* __restrict__ y,
                                                                 unsigned long long* counts,
                                                                 int64_t numel, int64_t channels,
                                                                 int64_t inner, bool use_smem) {
  using U = typename Op::Elem;
  constexpr int kN = kVector ? Vec<U>::kN : 1;
  extern __shared__ unsigned smem_counts[];
  if (use_smem)
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) smem_counts[c] = 0;
  __syncthreads();
  const int64_t block = channels * inner;
  for (int64_t base = int64_t(blockIdx.x) * kChunk; base < numel; base += int64_t(gridDim.x) * kChunk) {
    const int64_t end = std::min(base + kChunk, numel);
    for (int64_t k = base + int64_t(threadIdx.x) * kN; k < end; k += int64_t(blockDim.x) * kN) {
      U in[kN], out[kN];
      const int n = static_cast<int>(std::min<int64_t>(kN, end - k));
      if (kVector && n == kN) {
        *reinterpret_cast<Vec<U>*>(in) = *reinterpret_cast<const Vec<U>*>(x + k);
      } else {
        for (int l = 0; l < n; ++l) in[l] = x[k + l];
      }
#pragma unroll
      for (int l = 0; l < kN; ++l) out[l] = Op::relu(in[l]);
      if (kVector && n == kN) {
        *reinterpret_cast<Vec<U>*>(y + k) = *reinterpret_cast<Vec<U>*>(out);
      } else {
        for (int l = 0; l < n; ++l) y[k + l] = out[l];
      }
      int64_t channel = (k % block) / inner;
      int64_t within = (k % block) % inner;
      for (int l = 0; l < n; ++l) {
        if (Op::is_zero(out[l])) {
          if (use_smem) atomicAdd(smem_counts + channel, 1u);
          else atomicAdd(counts + channel, 1ull);
        }
        if (++within == inner) {
          within = 0;
          if (++channel == channels) channel = 0;
        }
      }
    }
  }
  __syncthreads();
  if (use_smem)
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x)
      if (smem_counts[c]) atomicAdd(counts + c, static_cast<unsigned long long>(smem_counts[c]));
}

template <typename Op>
cudaError_t launch(const void* xv, void* yv, int64_t* counts_i64, int64_t outer, int64_t channels,
                   int64_t inner, cudaStream_t stream) {
  using U = typename Op::Elem;
  const U* x = static_cast<const U*>(xv);
  U* y = static_cast<U*>(yv);
  auto* counts = reinterpret_cast<unsigned long long*>(counts_i64);
  cudaError_t err = cudaMemsetAsync(counts, 0, sizeof(int64_t) * channels, stream);
  const int64_t numel = outer * channels * inner;
  if (err != cudaSuccess || numel == 0) return err;
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && (reinterpret_cast<uintptr_t>(y) % 16 == 0);
  if (inner >= kRowModeMinInner) {
    const int64_t rows = outer * channels;
    const int64_t items = rows * ((inner + kChunk - 1) / kChunk);
    const unsigned grid = static_cast<unsigned>(std::min(items, kMaxBlocks));
    if (aligned) relu_count_rows<Op, true><<<grid, kThreads, 0, stream>>>(x, y, counts, rows, channels, inner);
    else relu_count_rows<Op, false><<<grid, kThreads, 0, stream>>>(x, y, counts, rows, channels, inner);
  } else {
    const bool use_smem = channels <= kMaxSmemChannels;
    const size_t smem = use_smem ? sizeof(unsigned) * channels : 0;
    const unsigned grid = static_cast<unsigned>(std::min((numel + kChunk - 1) / kChunk, kMaxBlocks));
    if (aligned) relu_count_positions<Op, true><<<grid, kThreads, smem, stream>>>(x, y, counts, numel, channels, inner, use_smem);
    else relu_count_positions<Op, false><<<grid, kThreads, smem, stream>>>(x, y, counts, numel, channels, inner, use_smem);
  }
  return cudaGetLastError();
}

}  // namespace

int relu_count_cuda(const void* x, void* y, int64_t* counts, int64_t outer, int64_t channels,
                    int64_t inner, DType dtype, void* stream_handle) {
  auto stream = static_cast<cudaStream_t>(stream_handle);
  switch (dtype) {
    case DType::Float32: return launch<ReluF32>(x, y, counts, outer, channels, inner, stream);
    case DType::Float64: return launch<ReluF64>(x, y, counts, outer, channels, inner, stream);
    case DType::Float16: return launch<ReluF16>(x, y, counts, outer, channels, inner, stream);
    case DType::BFloat16: return launch<ReluBF16>(x, y, counts, outer, channels, inner, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int cuda_device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  return err == cudaSuccess ? n : -static_cast<int>(err);
}

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace pozfast
