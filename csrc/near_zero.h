// Per-channel counts of near-zero elements, |a| <= tau for up to 32 thresholds tau, in one read-only pass
// or fused with ReLU (y = relu(x), counts of |y| <= tau): the plain C++ interface shared by the CPU and
// CUDA sources.
//
// A dense tensor is seen as [outer, channels, inner] in memory order (as in relu_count.h). An optional
// mask keeps or drops whole outer rows: outer row r is counted iff mask[r / repeat] != 0 (a token mask
// over (N, L) with outer = N * L has repeat 1; a mask over N of a channels_last (N, C, H, W) has repeat
// H * W). Dropped rows are not read when only counting; with ReLU they are written but not counted.
#pragma once
#include <cstdint>

#include "relu_count.h"

namespace pozfast {

constexpr int kMaxThresholds = 32;

struct NearZeroArgs {
  const void* x;
  void* y;          // relu(x) is written here (it may be x), or nullptr to count only
  int64_t* counts;  // [num_thresholds, channels], added to
  int64_t outer, channels, inner;
  const uint8_t* mask;  // nullptr: every row counts
  int64_t repeat;       // outer rows per mask entry, >= 1
  int num_thresholds;   // 1..kMaxThresholds
  // The thresholds rounded to the element type, as their bit patterns (sign bit clear; near_zero_elem.h
  // says why bit patterns). Two thresholds may round to the same key.
  int64_t keys[kMaxThresholds];
  DType dtype;
};

// Runs on at most `threads` OpenMP threads (the caller passes torch.get_num_threads()); returns how
// many ran. Throws std::invalid_argument on arguments out of range.
int near_zero_count_cpu(const NearZeroArgs& args, int threads);

#ifdef POZFAST_WITH_CUDA
// Launches on `stream` (a cudaStream_t) without synchronising; returns a cudaError_t value (0 on success).
// `clear`: the fused relu(-0.0) is +0.0, as torch's CUDA relu gives it in some versions (relu_cuda.h).
int near_zero_count_cuda(const NearZeroArgs& args, bool clear, void* stream);
#endif

}  // namespace pozfast
