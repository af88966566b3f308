// Depthwise convolution (groups == C, one input channel per group), for the fastconv CuPy backend.
//
// F = C*M filters (M the depthwise multiplier); filter f reads input channel f / M only, so a GEMM per
// group would have a reduction of only kh*kw: these direct kernels replace it. W is (F, 1, kh, kw);
// x, y, dout and dx are NCHW (nhwc == 0) or NHWC (nhwc == 1). Every output element is written by
// exactly one thread and every sum runs in a fixed order, so results are deterministic.
#include "fastconv_common.cuh"

// y[n, f, oh, ow] = (sum over (i, j) in row-major order of W[f, i, j] * x[n, f / M, oh*sh - ph + i*dh,
// ow*sw - pw + j*dw], zero outside x) + b[f] when has_bias; one thread per y element, in y's memory order.
template <typename T, typename I>
__global__ void fc_dw_fwd(const T* __restrict__ x, const T* __restrict__ Wt, const T* __restrict__ b,
                          T* __restrict__ y, int has_bias, I N, I C, I H, I W, I M, I OH, I OW, I kh, I kw,
                          I sh, I sw, I ph, I pw, I dh, I dw, int nhwc) {
    const I F = C * M;
    FC_FOR(idx, N * F * OH * OW) {
        I n, f, oh, ow;
        fc_split((I)idx, F, OH, OW, nhwc, n, f, oh, ow);
        const I c = f / M;
        const T* wf = Wt + f * kh * kw;
        T sum = T(0);
        for (I i = 0; i < kh; ++i) {
            const I h = fc_in_pos(oh, i, sh, ph, dh);
            if (h < 0 || h >= H) continue;
            for (I j = 0; j < kw; ++j) {
                const I w = fc_in_pos(ow, j, sw, pw, dw);
                if (w < 0 || w >= W) continue;
                sum += wf[i * kw + j] * x[fc_offset(n, c, h, w, C, H, W, nhwc)];
            }
        }
        y[idx] = has_bias ? sum + b[f] : sum;
    }
}

// dx[n, c, h, w] = sum over q < M, then (i, j) in row-major order, of W[c*M + q, i, j] *
// dout[n, c*M + q, oh, ow] where oh*sh - ph + i*dh == h and ow*sw - pw + j*dw == w (a gather: one
// thread per input element, no atomics).
template <typename T, typename I>
__global__ void fc_dw_bwd_data(const T* __restrict__ dout, const T* __restrict__ Wt, T* __restrict__ dx,
                               I N, I C, I H, I W, I M, I OH, I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh,
                               I dw, int nhwc) {
    const I F = C * M;
    FC_FOR(idx, N * C * H * W) {
        I n, c, h, w;
        fc_split((I)idx, C, H, W, nhwc, n, c, h, w);
        T sum = T(0);
        for (I q = 0; q < M; ++q) {
            const I f = c * M + q;
            const T* wf = Wt + f * kh * kw;
            for (I i = 0; i < kh; ++i) {
                const I oh = fc_out_pos(h, i, sh, ph, dh, OH);
                if (oh < 0) continue;
                for (I j = 0; j < kw; ++j) {
                    const I ow = fc_out_pos(w, j, sw, pw, dw, OW);
                    if (ow < 0) continue;
                    sum += wf[i * kw + j] * dout[fc_offset(n, f, oh, ow, F, OH, OW, nhwc)];
                }
            }
        }
        dx[idx] = sum;
    }
}

// partial[p, f, i, j] = sum over r in [p*L, min((p + 1)*L, N*OH*OW)), in increasing r = (n*OH + oh)*OW + ow,
// of dout[n, f, oh, ow] * x[n, f / M, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (zero outside x); one thread
// per partial element. P*L >= N*OH*OW splits the long reduction of dW into P chunks that run in
// parallel; P and L depend on the shapes only, so the result does not vary from run to run.
template <typename T, typename I>
__global__ void fc_dw_bwd_filter_partial(const T* __restrict__ x, const T* __restrict__ dout,
                                         T* __restrict__ partial, I P, I L, I N, I C, I H, I W, I M, I OH,
                                         I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw, int nhwc) {
    const I F = C * M;
    const I R = N * OH * OW;
    FC_FOR(idx, P * F * kh * kw) {
        const I e = (I)idx;
        const I j = e % kw;
        const I e1 = e / kw;
        const I i = e1 % kh;
        const I e2 = e1 / kh;
        const I f = e2 % F;
        const I p = e2 / F;
        const I c = f / M;
        const I r0 = p * L;  // < R: no chunk is empty; r0 + L could pass the range of I, R - r0 cannot
        const I r_end = R - r0 < L ? R : r0 + L;
        T sum = T(0);
        for (I r = r0; r < r_end; ++r) {
            const I ow = r % OW;
            const I nr = r / OW;
            const I oh = nr % OH;
            const I n = nr / OH;
            const I h = fc_in_pos(oh, i, sh, ph, dh);
            const I w = fc_in_pos(ow, j, sw, pw, dw);
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            sum += dout[fc_offset(n, f, oh, ow, F, OH, OW, nhwc)] * x[fc_offset(n, c, h, w, C, H, W, nhwc)];
        }
        partial[idx] = sum;
    }
}

// dW[k] = sum over p = 0, 1, ..., P - 1 in order of partial[p*K + k], K = F*kh*kw: the fixed-order
// second stage of the dW reduction; one thread per dW element.
template <typename T, typename I>
__global__ void fc_dw_bwd_filter_reduce(const T* __restrict__ partial, T* __restrict__ dW, I P, I K) {
    FC_FOR(idx, K) {
        const I k = (I)idx;
        T sum = T(0);
        for (I p = 0; p < P; ++p) sum += partial[p * K + k];
        dW[k] = sum;
    }
}
