// im2col and its adjoint col2im, for the fastconv CuPy backend, in both tensor layouts.
//
// NCHW: two column layouts share one kernel each (k_major selects):
//   row-major "book" layout, k_major = 0:  col[r, k]  of shape (N*OH*OW, C*kh*kw)
//   k-major GEMM layout,     k_major = 1:  col[k, r]  of shape (C*kh*kw, N*OH*OW)
// with r = (n*OH + oh)*OW + ow and k = (c*kh + i)*kw + j, for the channels c0 <= c0 + c < c0 + C of
// an x of Cx channels. The k-major layout makes the convolution one GEMM per group with no copy:
// the rows k of group g are the contiguous block [g*Cg*kh*kw, (g+1)*Cg*kh*kw). The channel window
// (c0, C) lets a caller build the columns of a few groups at a time, straight from x.
//
// NHWC: col[g, r, (i*kw + j)*Cg + cg] of shape (G, N*OH*OW, kh*kw*Cg), for the groups
// g0 <= g0 + g < g0 + G of an x of Ctot = Gtot*Cg channels: per group the rows (n, oh, ow) and the
// columns (i, j, c) of an NHWC GEMM, whose output (N*OH*OW, Fg) is already the NHWC y of the group.
// With one group this is the (N*OH*OW, kh*kw*C) matrix of rows (n, oh, ow), columns (i, j, c).
//
// Padding: only top (ph) and left (pw) enter the index math; bottom/right only set OH/OW.
#include "fastconv_common.cuh"

// col[r, k] (or col[k, r]) = x[n, c0 + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], zero outside x;
// one thread per col element, consecutive threads write consecutive col addresses.
template <typename T, typename I>
__global__ void fc_im2col(const T* __restrict__ x, T* __restrict__ col, I N, I Cx, I c0, I C, I H, I W,
                          I OH, I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw, int k_major) {
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
        col[idx] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * Cx + c0 + c) * H + h) * W + w] : T(0);
    }
}

// dx[n, c0 + c, h, w] = sum over (i, j) in row-major order of col[r, k] with k = (c*kh + i)*kw + j and
// r = (n*OH + oh)*OW + ow, where oh*sh - ph + i*dh == h and ow*sw - pw + j*dw == w (a gather: one
// thread per input pixel of the C channels from c0, no atomics, each written exactly once,
// deterministic). The other channels of dx are left to the calls for the other groups.
template <typename T, typename I>
__global__ void fc_col2im(const T* __restrict__ col, T* __restrict__ dx, I N, I Cx, I c0, I C, I H, I W,
                          I OH, I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw, int k_major) {
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
        dx[((n * Cx + c0 + c) * H + h) * W + w] = sum;
    }
}

// col[g, r, (i*kw + j)*Cg + cg] = x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, (g0 + g)*Cg + cg] (NHWC x of
// Ctot channels), zero outside x, r = (n*OH + oh)*OW + ow; one thread per col element, consecutive
// threads write consecutive col addresses and read consecutive channels.
template <typename T, typename I>
__global__ void fc_im2col_nhwc(const T* __restrict__ x, T* __restrict__ col, I N, I H, I W, I Ctot, I g0,
                               I G, I Cg, I OH, I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw) {
    const I K = kh * kw * Cg;
    const I R = N * OH * OW;
    FC_FOR(idx, G * R * K) {
        const I e = (I)idx;
        const I k = e % K;
        const I gr = e / K;
        const I r = gr % R;
        const I g = gr / R;
        const I cg = k % Cg;
        const I ij = k / Cg;
        const I j = ij % kw;
        const I i = ij / kw;
        const I ow = r % OW;
        const I nr = r / OW;
        const I oh = nr % OH;
        const I n = nr / OH;
        const I h = fc_in_pos(oh, i, sh, ph, dh);
        const I w = fc_in_pos(ow, j, sw, pw, dw);
        col[idx] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * H + h) * W + w) * Ctot + (g0 + g) * Cg + cg]
                                                        : T(0);
    }
}

// dx[n, h, w, (g0 + g)*Cg + cg] = sum over (i, j) in row-major order of col[g, r, (i*kw + j)*Cg + cg]
// with r = (n*OH + oh)*OW + ow, oh*sh - ph + i*dh == h, ow*sw - pw + j*dw == w (a gather: one thread
// per input element of groups g0 .. g0 + G - 1, no atomics, deterministic).
template <typename T, typename I>
__global__ void fc_col2im_nhwc(const T* __restrict__ col, T* __restrict__ dx, I N, I H, I W, I Ctot, I g0,
                               I G, I Cg, I OH, I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw) {
    const I K = kh * kw * Cg;
    const I R = N * OH * OW;
    const I C = G * Cg;
    FC_FOR(idx, N * H * W * C) {
        const I e = (I)idx;
        const I c = e % C;
        const I nhw = e / C;
        const I w = nhw % W;
        const I nh = nhw / W;
        const I h = nh % H;
        const I n = nh / H;
        const I g = c / Cg;
        const I cg = c - g * Cg;
        T sum = T(0);
        for (I i = 0; i < kh; ++i) {
            const I oh = fc_out_pos(h, i, sh, ph, dh, OH);
            if (oh < 0) continue;
            for (I j = 0; j < kw; ++j) {
                const I ow = fc_out_pos(w, j, sw, pw, dw, OW);
                if (ow < 0) continue;
                const I r = (n * OH + oh) * OW + ow;
                sum += col[(g * R + r) * K + (i * kw + j) * Cg + cg];
            }
        }
        dx[nhw * Ctot + g0 * Cg + c] = sum;
    }
}
