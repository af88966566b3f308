// Compatibility header: compile the fastconv CUDA kernel sources with a C++ compiler for the CPU.
//
//   g++ -O2 -shared -fPIC -x c++ -include cpu_compat.h im2col.cu ...
//
// __global__/__device__ become plain (inline) functions and the launch geometry is one block of one
// thread, so every grid-stride loop (FC_FOR) visits every element in order. Only the CUDA
// intrinsics the kernels use are provided. Used by the CI tests that check the kernels' index math
// on machines without a GPU; never by the GPU build.
#ifndef FASTCONV_CPU_COMPAT_H
#define FASTCONV_CPU_COMPAT_H

#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// g++ understands __restrict__ natively.

struct fc_cpu_dim3 {
    unsigned int x, y, z;
};

static const fc_cpu_dim3 threadIdx = {0u, 0u, 0u};
static const fc_cpu_dim3 blockIdx = {0u, 0u, 0u};
static const fc_cpu_dim3 blockDim = {1u, 1u, 1u};
static const fc_cpu_dim3 gridDim = {1u, 1u, 1u};

inline float __int_as_float(int bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

inline double __longlong_as_double(long long bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}

#endif  // FASTCONV_CPU_COMPAT_H
