// Shared device code for the fastconv CUDA kernels.
//
// The same sources compile three ways: with NVRTC through cupy.RawModule (the GPU backend), with
// NVRTC alone for compute_70/80/90 (the CI syntax/type check), and with g++ plus cpu_compat.h (the
// CI correctness check, one block of one thread). Nothing here may use a header NVRTC lacks.
//
// Template parameters of every kernel: T is the element type (float or double); I is the index type
// (int when every tensor of the call has fewer than 2^31 elements, long long otherwise). The
// grid-stride counter itself is always 64-bit, so "i += stride" cannot overflow even when I is int.
#ifndef FASTCONV_COMMON_CUH
#define FASTCONV_COMMON_CUH

typedef long long fc_ptrdiff;

// Grid-stride loop over [0, n) with a 64-bit counter (CuPy's CUPY_FOR): one element per iteration,
// any grid covers any n. Kernels narrow the counter to their index type I for the index math.
#define FC_FOR(idx, n)                                                                     \
    for (fc_ptrdiff idx = (fc_ptrdiff)blockIdx.x * blockDim.x + threadIdx.x;              \
         idx < (fc_ptrdiff)(n); idx += (fc_ptrdiff)blockDim.x * gridDim.x)

// -inf, the value of max-pool padding, without <cmath> (NVRTC has no standard headers).
template <typename T>
__device__ __forceinline__ T fc_neg_inf();

template <>
__device__ __forceinline__ float fc_neg_inf<float>() {
    return __int_as_float((int)0xff800000);
}

template <>
__device__ __forceinline__ double fc_neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ULL);
}

// NaN test without <cmath>; valid because the kernels are never compiled with fast-math.
template <typename T>
__device__ __forceinline__ bool fc_isnan(T v) {
    return v != v;
}

// Offset of element (n, c, h, w) of a 4-D tensor of C channels stored as NCHW (nhwc == 0) or NHWC
// (nhwc == 1): ((n*C + c)*H + h)*W + w, or ((n*H + h)*W + w)*C + c.
template <typename I>
__device__ __forceinline__ I fc_offset(I n, I c, I h, I w, I C, I H, I W, int nhwc) {
    return nhwc ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w;
}

// Inverse of fc_offset: the (n, c, h, w) of flat index e, so that threads walk memory in order.
template <typename I>
__device__ __forceinline__ void fc_split(I e, I C, I H, I W, int nhwc, I& n, I& c, I& h, I& w) {
    if (nhwc) {
        c = e % C;
        e /= C;
        w = e % W;
        e /= W;
        h = e % H;
        n = e / H;
    } else {
        w = e % W;
        e /= W;
        h = e % H;
        e /= H;
        c = e % C;
        n = e / C;
    }
}

// Input row (or column) read by window offset k of output position o: o*s - p + k*d
// (p is the top padding for rows, the left padding for columns).
template <typename I>
__device__ __forceinline__ I fc_in_pos(I o, I k, I s, I p, I d) {
    return o * s - p + k * d;
}

// Inverse of fc_in_pos for a fixed offset k: the output position o with o*s - p + k*d == h, or -1
// when there is none in [0, out) (h is not on the stride grid, or falls outside the output).
template <typename I>
__device__ __forceinline__ I fc_out_pos(I h, I k, I s, I p, I d, I out) {
    const I t = h + p - k * d;
    if (t < 0 || t % s != 0) return -1;
    const I o = t / s;
    return o < out ? o : -1;
}

#endif  // FASTCONV_COMMON_CUH
