// Function qualifiers for code that the C++ and CUDA sources share.
#pragma once

// Host and device functions under nvcc; plain functions in C++.
#if defined(__CUDACC__)
#define POZFAST_HD __host__ __device__
#else
#define POZFAST_HD
#endif

// Always inlined: each CPU instruction-set build of a kernel then compiles its own copy, and the linker
// cannot give the baseline kernels a copy that was compiled for a wider instruction set.
#if defined(__CUDACC__)
#define POZFAST_FORCEINLINE __forceinline__
#elif defined(__GNUC__)
#define POZFAST_FORCEINLINE inline __attribute__((always_inline))
#else
#define POZFAST_FORCEINLINE inline
#endif
