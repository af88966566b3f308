// im2col and its adjoint col2im, for the fastconv CuPy backend.
//
// Two column layouts share one kernel each (k_major selects):
//   row-major "book" layout, k_major = 0:  col[r, k]  of shape (N*OH*OW, C*kh*kw)
//   k-major GEMM layout,     k_major = 1:  col[k, r]  of shape (C*kh*kw, N*OH*OW)
// with r = (n*OH + oh)*OW + ow and k = (c*kh + i)*kw + j. The k-major layout lets the convolution be
// one GEMM, W (F, C*kh*kw) @ col (C*kh*kw, N*OH*OW), with the reduction over N*OH*OW in backward.
#include "fastconv_common.cuh"

// col[r, k] (or col[k, r]) = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], zero outside x;
// one thread per col element, consecutive threads write consecutive col addresses.
template <typename T, typename I>
__global__ void fc_im2col(const T* __restrict__ x, T* __restrict__ col, I N, I C, I H, I W, I OH, I OW,
                          I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw, int k_major) {
    const I K = C * kh * kw;
    const I R = N * OH * OW;
    FC_FOR(idx, R * K) {
        const I e = (I)idx;
        I r, k;
        if (k_major) {
            k = e / R;
            r = e - k * R;
        } else {
            r = e / K;
            k = e - r * K;
        }
        const I j = k % kw;
        const I ci = k / kw;
        const I i = ci % kh;
        const I c = ci / kh;
        const I ow = r % OW;
        const I nr = r / OW;
        const I oh = nr % OH;
        const I n = nr / OH;
        const I h = fc_in_pos(oh, i, sh, ph, dh);
        const I w = fc_in_pos(ow, j, sw, pw, dw);
        col[idx] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * C + c) * H + h) * W + w] : T(0);
    }
}

// dx[n, c, h, w] = sum over (i, j) in row-major order of col[r, k] with k = (c*kh + i)*kw + j and
// r = (n*OH + oh)*OW + ow, where oh*sh - ph + i*dh == h and ow*sw - pw + j*dw == w (a gather: one
// thread per input pixel, no atomics, every dx element written exactly once, deterministic).
template <typename T, typename I>
__global__ void fc_col2im(const T* __restrict__ col, T* __restrict__ dx, I N, I C, I H, I W, I OH, I OW,
                          I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw, int k_major) {
    const I K = C * kh * kw;
    const I R = N * OH * OW;
    FC_FOR(idx, N * C * H * W) {
        const I e = (I)idx;
        const I w = e % W;
        const I nch = e / W;
        const I h = nch % H;
        const I nc = nch / H;
        const I c = nc % C;
        const I n = nc / C;
        T sum = T(0);
        for (I i = 0; i < kh; ++i) {
            const I oh = fc_out_pos(h, i, sh, ph, dh, OH);
            if (oh < 0) continue;
            for (I j = 0; j < kw; ++j) {
                const I ow = fc_out_pos(w, j, sw, pw, dw, OW);
                if (ow < 0) continue;
                const I r = (n * OH + oh) * OW + ow;
                const I k = (c * kh + i) * kw + j;
                sum += col[k_major ? k * R + r : r * K + k];
            }
        }
        dx[idx] = sum;
    }
}
