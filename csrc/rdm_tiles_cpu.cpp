// CPU RDM tile epilogues: the entry points, which run the instruction-set build of the kernels
// (rdm_tiles_isa.cpp) that relu_count runs too.
#include <cstring>
#include <vector>

#include "rdm_tiles.h"
#include "rdm_tiles_isa.h"
#include "relu_count.h"

namespace pozfast {
namespace {

const RdmKernels& kernels() {
  const char* isa = cpu_isa();
#if defined(POZFAST_ISA_AVX512)
  if (std::strcmp(isa, "avx512") == 0) return rdm_kernels_avx512;
#endif
#if defined(POZFAST_ISA_AVX2)
  if (std::strcmp(isa, "avx2") == 0) return rdm_kernels_avx2;
#endif
#if defined(POZFAST_ISA_NATIVE)
  return rdm_kernels_native;
#else
  (void)isa;
  return rdm_kernels_default;
#endif
}

}  // namespace

void pack_condensed_cpu(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0,
                        int64_t n, const uint8_t* bad, void* out, bool is_double) {
  kernels().pack[is_double](tile, ldg, rows, cols, i0, j0, n, bad, out);
}

void pair_moments_cpu(const PairMomentsArgs& args, double* out) {
  std::vector<double> scratch(static_cast<size_t>(6 * args.rows + 3 * (args.rows + args.cols)));
  kernels().moments[args.is_double](args, scratch.data(), out);
}

}  // namespace pozfast
