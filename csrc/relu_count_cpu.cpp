// CPU (OpenMP) fused ReLU + per-channel zero count. One pass over x: each thread takes a contiguous
// slice of the flat buffer, writes y and accumulates counts in thread-local arrays that are summed at
// the end, so there are no atomics and no temporaries of x's size. The per-thread loops are compiled
// once per CPU instruction set (relu_count_isa.cpp); the widest one that this CPU runs is used.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <vector>

#include "cpu_parallel.h"
#include "relu_count.h"
#include "relu_count_isa.h"

namespace pozfast {
namespace {

// Rows at least this long are counted row by row; shorter ones by position within a [channels, inner] block.
constexpr int64_t kRowModeMinInner = 64;
// Largest channels*inner block that gets per-position thread-local counters.
constexpr int64_t kMaxBlockPositions = int64_t(1) << 18;

struct Isa {
  const char* name;
  const ReluKernels* kernels;
  bool (*runs_here)();
};

bool any_cpu() { return true; }
#if defined(POZFAST_ISA_AVX2)
// The same features that CMakeLists.txt enables for each set (libgcc also checks that the OS saves the
// vector registers).
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif
#if defined(POZFAST_ISA_AVX512)
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// Widest first; the last one runs on every CPU of the architecture (on the build machine's, if native).
const Isa kIsas[] = {
#if defined(POZFAST_ISA_AVX512)
    {"avx512", &relu_kernels_avx512, has_avx512},
#endif
#if defined(POZFAST_ISA_AVX2)
    {"avx2", &relu_kernels_avx2, has_avx2},
#endif
#if defined(POZFAST_ISA_NATIVE)
    {"native", &relu_kernels_native, any_cpu},
#else
    {"default", &relu_kernels_default, any_cpu},
#endif
};

std::atomic<const Isa*>& current_isa() {
  static std::atomic<const Isa*> isa{
      &*std::find_if(std::begin(kIsas), std::end(kIsas), [](const Isa& i) { return i.runs_here(); })};
  return isa;
}

}  // namespace

int relu_count_cpu(const void* x, void* y, int64_t* counts, int64_t outer, int64_t channels, int64_t inner,
                   DType dtype, int threads) {
  std::fill(counts, counts + channels, int64_t(0));
  const int64_t numel = outer * channels * inner;
  if (numel == 0) return 0;
  const ReluKernels& kernels = *current_isa().load(std::memory_order_relaxed)->kernels;
  const int team = team_size(numel, threads);
  const int64_t block = channels * inner;
  if (inner >= kRowModeMinInner || block > kMaxBlockPositions || outer >= (int64_t(1) << 32)) {
    PerThread<int64_t> by_channel(team, channels);
    const int ran = parallel_slices(numel, team, [&](int t, int64_t begin, int64_t end) {
      kernels.rows[int(dtype)]({x, y, begin, end, channels, inner, by_channel.of(t), nullptr});
    });
    for (int t = 0; t < team; ++t)
      for (int64_t c = 0; c < channels; ++c) counts[c] += by_channel.of(t)[c];
    return ran;
  }
  PerThread<uint32_t> by_position(team, block);
  const int ran = parallel_slices(numel, team, [&](int t, int64_t begin, int64_t end) {
    kernels.positions[int(dtype)]({x, y, begin, end, channels, inner, nullptr, by_position.of(t)});
  });
  for (int t = 0; t < team; ++t) {
    const uint32_t* mine = by_position.of(t);
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t k = 0; k < inner; ++k) counts[c] += mine[c * inner + k];
  }
  return ran;
}

std::vector<std::pair<std::string, bool>> cpu_isas() {
  std::vector<std::pair<std::string, bool>> out;
  for (const Isa& isa : kIsas) out.emplace_back(isa.name, isa.runs_here());
  return out;
}

const char* cpu_isa() { return current_isa().load()->name; }

void set_cpu_isa(const std::string& name) {
  for (const Isa& isa : kIsas) {
    if (name != isa.name) continue;
    if (!isa.runs_here()) throw std::invalid_argument("this CPU lacks the " + name + " instructions");
    current_isa().store(&isa);
    return;
  }
  std::string compiled;
  for (const Isa& isa : kIsas) compiled += std::string(compiled.empty() ? "" : ", ") + isa.name;
  throw std::invalid_argument("no CPU kernels for '" + name + "' in this build (it has " + compiled + ")");
}

}  // namespace pozfast
