// CUDA fused ReLU + per-channel zero count. One pass; 16-byte vector loads and stores where the
// buffers are aligned; each block reduces its partial counts (in registers, then across the block) and
// issues one atomic per channel or position it touched. x and y may be one buffer (in place), so the
// pointers carry no __restrict__. Launched on the caller's stream.
#include <cuda_runtime.h>

#include <algorithm>

#include "relu_count.h"
#include "relu_cuda.h"

namespace pozfast {
namespace {


constexpr int kThreads = 256;
constexpr int64_t kRowModeMinInner = 64;
constexpr int64_t kChunk = 8192;            // elements one block handles per step
constexpr int64_t kMaxBlocks = 1 << 20;

template <typename U>
struct alignas(16) Vec {
  static constexpr int kN = 16 / sizeof(U);
  U v[kN];
};

// Vector loads a thread issues before its first store. x and y may alias, so the compiler cannot move a load
// above an earlier store: without this batching each thread would wait for every load in turn.
constexpr int kInFlight = 4;

template <typename Op>
__device__ __forceinline__ Vec<typename Op::Elem> relu_vector(const Vec<typename Op::Elem>& in, unsigned& zeros,
                                                              bool clear) {
  Vec<typename Op::Elem> out;
#pragma unroll
  for (int l = 0; l < Vec<typename Op::Elem>::kN; ++l) {
    out.v[l] = Op::relu(in.v[l], clear);
    zeros += Op::is_zero(out.v[l]);
  }
  return out;
}

template <typename Op, bool kVector>
__device__ __forceinline__ unsigned relu_span(const typename Op::Elem* x, typename Op::Elem* y, int64_t begin,
                                              int64_t end, bool clear) {
  using U = typename Op::Elem;
  using V = Vec<U>;
  unsigned zeros = 0;
  int64_t i = begin;
  if (kVector) {
    const int64_t head = std::min<int64_t>(end, (begin + V::kN - 1) / V::kN * V::kN);
    for (int64_t k = begin + threadIdx.x; k < head; k += blockDim.x) {
      const U v = Op::relu(x[k], clear);
      y[k] = v;
      zeros += Op::is_zero(v);
    }
    const int64_t body_end = head + (end - head) / V::kN * V::kN;
    const int64_t step = int64_t(blockDim.x) * V::kN;
    for (int64_t k0 = head + int64_t(threadIdx.x) * V::kN; k0 < body_end; k0 += kInFlight * step) {
      V in[kInFlight];
#pragma unroll
      for (int g = 0; g < kInFlight; ++g)
        if (k0 + g * step < body_end) in[g] = *reinterpret_cast<const V*>(x + k0 + g * step);
#pragma unroll
      for (int g = 0; g < kInFlight; ++g)
        if (k0 + g * step < body_end) *reinterpret_cast<V*>(y + k0 + g * step) = relu_vector<Op>(in[g], zeros, clear);
    }
    i = body_end;
  }
  for (int64_t k = i + threadIdx.x; k < end; k += blockDim.x) {
    const U v = Op::relu(x[k], clear);
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
__global__ void __launch_bounds__(kThreads) relu_count_rows(const typename Op::Elem* x,
                                                            typename Op::Elem* y,
                                                            unsigned long long* counts,
                                                            int64_t rows, int64_t channels,
                                                            int64_t inner, bool clear) {
  const int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  for (int64_t item = blockIdx.x; item < rows * chunks_per_row; item += gridDim.x) {
    const int64_t row = item / chunks_per_row;
    const int64_t begin = row * inner + (item % chunks_per_row) * kChunk;
    const int64_t end = std::min(begin + kChunk, (row + 1) * inner);
    const unsigned total = block_sum(relu_span<Op, kVector>(x, y, begin, end, clear));
    if (threadIdx.x == 0 && total) atomicAdd(counts + row % channels, static_cast<unsigned long long>(total));
  }
}

// Short rows (inner < kRowModeMinInner: channels last, (N, L, C) token activations): the tensor is a
// [rows, positions] matrix whose position p belongs to channel p / inner. A thread owns kN consecutive
// positions (one 16-byte vector) and walks rows, counting its zeros in registers; the block then sums
// its rows in shared memory and issues one atomic per position: no per-element atomics at any width.
template <typename Op, bool kVector>
__global__ void __launch_bounds__(kThreads, 4) relu_count_columns(const typename Op::Elem* x, typename Op::Elem* y,
                                                               unsigned long long* counts, int64_t rows,
                                                               int64_t positions, int64_t inner, bool clear) {
  using U = typename Op::Elem;
  constexpr int kN = Vec<U>::kN;
  __shared__ unsigned partial[kThreads * kN];
  const int64_t first = int64_t(blockIdx.x) * blockDim.x * kN;  // the block's first position
  const int64_t p0 = first + int64_t(threadIdx.x) * kN;
  const int n = p0 < positions ? static_cast<int>(std::min<int64_t>(kN, positions - p0)) : 0;
  unsigned zeros[kN] = {};
  const int64_t first_row = int64_t(blockIdx.y) * blockDim.y + threadIdx.y, step = int64_t(gridDim.y) * blockDim.y;
  if (kVector && n == kN) {
    for (int64_t r0 = first_row; r0 < rows; r0 += kInFlight * step) {
      Vec<U> in[kInFlight];
#pragma unroll
      for (int g = 0; g < kInFlight; ++g)
        if (r0 + g * step < rows) in[g] = *reinterpret_cast<const Vec<U>*>(x + (r0 + g * step) * positions + p0);
#pragma unroll
      for (int g = 0; g < kInFlight; ++g) {
        if (r0 + g * step >= rows) continue;
        Vec<U> out;
#pragma unroll
        for (int l = 0; l < kN; ++l) {
          out.v[l] = Op::relu(in[g].v[l], clear);
          zeros[l] += Op::is_zero(out.v[l]);
        }
        *reinterpret_cast<Vec<U>*>(y + (r0 + g * step) * positions + p0) = out;
      }
    }
  } else {
    for (int64_t r = first_row; r < rows; r += step)
#pragma unroll
      for (int l = 0; l < kN; ++l) {  // unrolled, so that zeros[] stays in registers
        if (l >= n) break;
        const U v = Op::relu(x[r * positions + p0 + l], clear);
        y[r * positions + p0 + l] = v;
        zeros[l] += Op::is_zero(v);
      }
  }
  const int width = blockDim.x * kN;  // positions of this block
#pragma unroll
  for (int l = 0; l < kN; ++l) partial[threadIdx.y * width + threadIdx.x * kN + l] = zeros[l];
  __syncthreads();
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int slot = tid; slot < width; slot += kThreads) {
    unsigned total = 0;
    for (int row = 0; row < static_cast<int>(blockDim.y); ++row) total += partial[row * width + slot];
    if (total && first + slot < positions)
      atomicAdd(counts + (first + slot) / inner, static_cast<unsigned long long>(total));
  }
}

int multiprocessors() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 128;
  return sms;
}

template <typename Op>
cudaError_t launch(const void* xv, void* yv, int64_t* counts_i64, int64_t outer, int64_t channels,
                   int64_t inner, bool clear, cudaStream_t stream) {
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
    if (aligned) relu_count_rows<Op, true><<<grid, kThreads, 0, stream>>>(x, y, counts, rows, channels, inner, clear);
    else relu_count_rows<Op, false><<<grid, kThreads, 0, stream>>>(x, y, counts, rows, channels, inner, clear);
  } else {
    constexpr int kN = Vec<U>::kN;
    const int64_t positions = channels * inner, rows = numel / positions;
    const int64_t vectors = (positions + kN - 1) / kN;
    int across = 1;  // threads across positions: a power of two up to the block
    while (across < vectors && across < kThreads) across <<= 1;
    const dim3 block(across, kThreads / across);
    const int64_t grid_x = (vectors + across - 1) / across;
    // About 8 blocks per multiprocessor in all; grid.y within its hardware limit.
    const int64_t want_y = std::max<int64_t>(1, 8 * multiprocessors() / grid_x);
    const int64_t grid_y = std::min<int64_t>({want_y, (rows + block.y - 1) / block.y, 65535});
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
    if (aligned && positions % kN == 0)
      relu_count_columns<Op, true><<<grid, block, 0, stream>>>(x, y, counts, rows, positions, inner, clear);
    else
      relu_count_columns<Op, false><<<grid, block, 0, stream>>>(x, y, counts, rows, positions, inner, clear);
  }
  return cudaGetLastError();
}

}  // namespace

int relu_count_cuda(const void* x, void* y, int64_t* counts, int64_t outer, int64_t channels,
                    int64_t inner, DType dtype, bool clear, void* stream_handle) {
  auto stream = static_cast<cudaStream_t>(stream_handle);
  switch (dtype) {
    case DType::Float32: return launch<CudaReluF32>(x, y, counts, outer, channels, inner, clear, stream);
    case DType::Float64: return launch<CudaReluF64>(x, y, counts, outer, channels, inner, clear, stream);
    case DType::Float16: return launch<CudaReluF16>(x, y, counts, outer, channels, inner, clear, stream);
    case DType::BFloat16: return launch<CudaReluBF16>(x, y, counts, outer, channels, inner, clear, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int cuda_device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  return err == cudaSuccess ? n : -static_cast<int>(err);
}

int cuda_kernel_image(int device) {
  int previous = 0;
  cudaError_t err = cudaGetDevice(&previous);
  if (err == cudaSuccess) err = cudaSetDevice(device);
  if (err != cudaSuccess) return static_cast<int>(err);
  cudaFuncAttributes attributes;
  err = cudaFuncGetAttributes(&attributes, relu_count_rows<CudaReluF32, true>);
  cudaSetDevice(previous);
  return static_cast<int>(err);
}

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace pozfast
