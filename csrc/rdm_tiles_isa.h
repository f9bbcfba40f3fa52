// The CPU RDM tile epilogues, compiled once per CPU instruction set (rdm_tiles_isa.cpp, see CMakeLists.txt);
// rdm_tiles_cpu.cpp runs the set that relu_count uses (cpu_isa()).
#pragma once
#include <cstdint>

#include "rdm_tiles.h"

namespace pozfast {

// Indexed by is_double. moments() needs scratch for 6 * rows + 3 * (rows + cols) doubles.
struct RdmKernels {
  void (*pack[2])(const void* tile, int64_t ldg, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t n,
                  const uint8_t* bad, void* out);
  void (*moments[2])(const PairMomentsArgs& args, double* scratch, double* moments);
};

extern const RdmKernels rdm_kernels_default;
extern const RdmKernels rdm_kernels_native;
extern const RdmKernels rdm_kernels_avx2;
extern const RdmKernels rdm_kernels_avx512;

}  // namespace pozfast
