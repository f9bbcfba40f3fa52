// CUDA near-zero counts, read-only or fused with ReLU. One pass; every thread counts all thresholds in
// registers (a compile-time bound on the threshold count, unused ones padded with a key that nothing
// reaches), and each block adds its totals with one global atomic per threshold and channel it touched.
// Long rows (inner >= 64): a block takes a chunk of one row (one channel) at a time, with 16-byte loads
// where aligned. Short rows (channels last, e.g. (tokens, channels) activations): each thread owns one
// position of the [channels, inner] block and walks many rows, so that a block's rows cost no atomics
// until its end. Launched on the caller's stream; no host synchronisation, no allocation.
//
// x and y are not __restrict__: y may be x (in place).
#include <cuda_runtime.h>

#include <algorithm>

#include "near_zero.h"
#include "near_zero_elem.h"
#include "relu_cuda.h"

namespace pozfast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kRowModeMinInner = 64;
constexpr int64_t kChunk = 8192;          // elements of one row that a block counts per step
constexpr int64_t kMaxBlocks = 1 << 20;   // grid.x of the row kernel; blocks loop over the rest
constexpr int64_t kMaxGridY = 65535;
constexpr int kBlocksPerSm = 16;          // blocks of the position kernel to aim for, per multiprocessor

using Count = unsigned long long;

template <typename U>
struct alignas(16) Vec {
  static constexpr int kN = 16 / sizeof(U);
  U v[kN];
};

template <typename E, int kMax>
struct Taus {
  typename E::Key key[kMax];

  __device__ __forceinline__ explicit Taus(const NearZeroArgs& a) {
#pragma unroll
    for (int k = 0; k < kMax; ++k)
      key[k] = k < a.num_thresholds ? static_cast<typename E::Key>(a.keys[k]) : static_cast<typename E::Key>(-1);
  }
  __device__ __forceinline__ void count(typename E::Key v, unsigned (&cnt)[kMax]) const {
#pragma unroll
    for (int k = 0; k < kMax; ++k) cnt[k] += v <= key[k];
  }
};

// One element: relu it in place when kRelu, count it when kCount.
template <typename E, bool kRelu, bool kCount, int kMax>
__device__ __forceinline__ typename E::Elem visit(typename E::Elem v, const Taus<E, kMax>& taus,
                                                  unsigned (&cnt)[kMax], bool clear) {
  if (kRelu) v = E::relu(v, clear);
  if (kCount) taus.count(E::key(v), cnt);
  return v;
}

// This thread's elements of x[begin, end), block-strided, 16 bytes at a time where aligned.
template <typename E, bool kRelu, bool kCount, bool kVector, int kMax>
__device__ __forceinline__ void visit_span(const typename E::Elem* x, typename E::Elem* y, int64_t begin,
                                           int64_t end, const Taus<E, kMax>& taus, unsigned (&cnt)[kMax],
                                           bool clear) {
  using U = typename E::Elem;
  using V = Vec<U>;
  int64_t i = begin;
  if (kVector) {
    const int64_t head = std::min<int64_t>(end, (begin + V::kN - 1) / V::kN * V::kN);
    for (int64_t k = begin + threadIdx.x; k < head; k += blockDim.x) {
      const U v = visit<E, kRelu, kCount>(x[k], taus, cnt, clear);
      if (kRelu) y[k] = v;
    }
    const int64_t body_end = head + (end - head) / V::kN * V::kN;
    for (int64_t k = head + int64_t(threadIdx.x) * V::kN; k < body_end; k += int64_t(blockDim.x) * V::kN) {
      V in = *reinterpret_cast<const V*>(x + k);
#pragma unroll
      for (int l = 0; l < V::kN; ++l) in.v[l] = visit<E, kRelu, kCount>(in.v[l], taus, cnt, clear);
      if (kRelu) *reinterpret_cast<V*>(y + k) = in;
    }
    i = body_end;
  }
  for (int64_t k = i + threadIdx.x; k < end; k += blockDim.x) {
    const U v = visit<E, kRelu, kCount>(x[k], taus, cnt, clear);
    if (kRelu) y[k] = v;
  }
}

// Adds the block's totals of cnt to dst[k * stride], k < count; every thread of the block calls it.
template <int kMax>
__device__ __forceinline__ void block_add(unsigned (&cnt)[kMax], int count, Count* dst, int64_t stride) {
  __shared__ unsigned warp_sums[kWarps][kMax];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < kMax; ++k) {
    unsigned v = cnt[k];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < count) {
    Count total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][threadIdx.x];
    if (total) atomicAdd(dst + threadIdx.x * stride, total);
  }
  __syncthreads();
}

template <typename E, bool kRelu, bool kVector, int kMax>
__global__ void __launch_bounds__(kThreads) near_zero_rows(NearZeroArgs a, bool clear) {
  using U = typename E::Elem;
  const U* x = static_cast<const U*>(a.x);
  U* y = static_cast<U*>(a.y);
  Count* counts = reinterpret_cast<Count*>(a.counts);
  const Taus<E, kMax> taus(a);
  const int64_t rows = a.outer * a.channels;
  const int64_t chunks_per_row = (a.inner + kChunk - 1) / kChunk;
  for (int64_t item = blockIdx.x; item < rows * chunks_per_row; item += gridDim.x) {
    const int64_t row = item / chunks_per_row;
    const int64_t begin = row * a.inner + (item % chunks_per_row) * kChunk;
    const int64_t end = std::min(begin + kChunk, (row + 1) * a.inner);
    unsigned cnt[kMax] = {};
    if (a.mask != nullptr && a.mask[row / a.channels / a.repeat] == 0) {  // the same for the whole block
      if (kRelu) visit_span<E, true, false, kVector>(x, y, begin, end, taus, cnt, clear);
      continue;
    }
    visit_span<E, kRelu, true, kVector>(x, y, begin, end, taus, cnt, clear);
    block_add(cnt, a.num_thresholds, counts + row % a.channels, a.channels);
  }
}

// Short rows. The block is `width` threads along positions times kThreads / width rows; thread
// (position p, row lane) visits rows lane, lane + step, ... of its block's share of the rows. At the end
// the block sums its threads' counts per channel in shared memory ([count, width] counters: the block
// spans at most `width` channels) and adds each nonzero total to global memory.
template <typename E, bool kRelu, int kMax>
__global__ void __launch_bounds__(kThreads) near_zero_positions(NearZeroArgs a, int width, bool clear) {
  using U = typename E::Elem;
  extern __shared__ unsigned by_channel[];
  const U* x = static_cast<const U*>(a.x);
  U* y = static_cast<U*>(a.y);
  Count* counts = reinterpret_cast<Count*>(a.counts);
  const Taus<E, kMax> taus(a);
  const int64_t positions = a.channels * a.inner;
  const int64_t first = int64_t(blockIdx.x) * width;
  const int64_t p = first + threadIdx.x % width;
  const int64_t lanes = kThreads / width;
  const int64_t step = int64_t(gridDim.y) * lanes;
  unsigned cnt[kMax] = {};
  if (p < positions) {
    int64_t row = int64_t(blockIdx.y) * lanes + threadIdx.x / width;
    // The mask entry row / repeat advances with row: no division per row.
    const int64_t repeat = a.mask != nullptr ? a.repeat : 1;
    const int64_t step_q = step / repeat, step_r = step % repeat;
    int64_t q = row / repeat, r = row % repeat;
    for (; row < a.outer; row += step) {
      const int64_t k = row * positions + p;
      if (a.mask == nullptr || a.mask[q] != 0) {
        const U v = visit<E, kRelu, true>(x[k], taus, cnt, clear);
        if (kRelu) y[k] = v;
      } else if (kRelu) {
        y[k] = E::relu(x[k], clear);
      }
      q += step_q, r += step_r;
      if (r >= repeat) r -= repeat, ++q;
    }
  }
  for (int i = threadIdx.x; i < a.num_thresholds * width; i += kThreads) by_channel[i] = 0;
  __syncthreads();
  const int64_t c0 = first / a.inner;
  if (p < positions) {
    const int64_t c = p / a.inner - c0;
#pragma unroll
    for (int k = 0; k < kMax; ++k)
      if (cnt[k]) atomicAdd(by_channel + k * width + c, cnt[k]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < a.num_thresholds * width; i += kThreads) {
    const int64_t c = c0 + i % width;
    if (by_channel[i] && c < a.channels) atomicAdd(counts + (i / width) * a.channels + c, Count(by_channel[i]));
  }
}

template <typename E, bool kRelu, int kMax>
cudaError_t launch(const NearZeroArgs& a, bool clear, cudaStream_t stream) {
  if (a.inner >= kRowModeMinInner) {
    const int64_t items = a.outer * a.channels * ((a.inner + kChunk - 1) / kChunk);
    const unsigned grid = static_cast<unsigned>(std::min(items, kMaxBlocks));
    const bool aligned = reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && reinterpret_cast<uintptr_t>(a.y) % 16 == 0;
    if (aligned) near_zero_rows<E, kRelu, true, kMax><<<grid, kThreads, 0, stream>>>(a, clear);
    else near_zero_rows<E, kRelu, false, kMax><<<grid, kThreads, 0, stream>>>(a, clear);
    return cudaGetLastError();
  }
  const int64_t positions = a.channels * a.inner;
  int width = 32;
  while (width < kThreads && width < positions) width *= 2;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t grid_x = (positions + width - 1) / width;
  const int64_t lanes = kThreads / width;
  const int64_t wanted = std::max<int64_t>(1, int64_t(sms) * kBlocksPerSm / grid_x);
  const int64_t grid_y = std::min({kMaxGridY, (a.outer + lanes - 1) / lanes, wanted});
  const size_t smem = sizeof(unsigned) * a.num_thresholds * width;
  near_zero_positions<E, kRelu, kMax><<<dim3(unsigned(grid_x), unsigned(grid_y)), kThreads, smem, stream>>>(a, width,
                                                                                                     clear);
  return cudaGetLastError();
}

template <typename E, bool kRelu>
cudaError_t launch_bounded(const NearZeroArgs& a, bool clear, cudaStream_t stream) {
  if (a.num_thresholds <= 1) return launch<E, kRelu, 1>(a, clear, stream);
  if (a.num_thresholds <= 4) return launch<E, kRelu, 4>(a, clear, stream);
  if (a.num_thresholds <= 8) return launch<E, kRelu, 8>(a, clear, stream);
  if (a.num_thresholds <= 16) return launch<E, kRelu, 16>(a, clear, stream);
  return launch<E, kRelu, kMaxThresholds>(a, clear, stream);
}

template <typename E>
cudaError_t launch_any(const NearZeroArgs& a, bool clear, cudaStream_t stream) {
  return a.y != nullptr ? launch_bounded<E, true>(a, clear, stream) : launch_bounded<E, false>(a, clear, stream);
}

}  // namespace

int near_zero_count_cuda(const NearZeroArgs& a, bool clear, void* stream_handle) {
  if (a.num_thresholds < 1 || a.num_thresholds > kMaxThresholds || a.outer < 0 || a.channels < 0 || a.inner < 0 ||
      (a.mask != nullptr && a.repeat < 1))
    return static_cast<int>(cudaErrorInvalidValue);
  if (a.outer * a.channels * a.inner == 0) return 0;
  auto stream = static_cast<cudaStream_t>(stream_handle);
  // A fused ReLU follows torch's CUDA relu (relu_cuda.h); the keys are those of near_zero_elem.h.
  switch (a.dtype) {
    case DType::Float32: return launch_any<NearZeroElem<CudaReluF32, int32_t, 0x7f800000u>>(a, clear, stream);
    case DType::Float64: return launch_any<NearZeroElem<CudaReluF64, int64_t, 0x7ff0000000000000u>>(a, clear, stream);
    case DType::Float16: return launch_any<NearZeroElem<CudaReluF16, int16_t, 0x7c00u>>(a, clear, stream);
    case DType::BFloat16: return launch_any<NearZeroElem<CudaReluBF16, int16_t, 0x7f80u>>(a, clear, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace pozfast
