// 2-D max and average pooling, forward and backward, for the fastconv CuPy backend.
//
// Tensors are NCHW (nhwc == 0) or NHWC (nhwc == 1); (OH, OW) is given by the caller (ceil mode makes
// it one larger than the floor formula), and every window holds at least one input element.
// Padding: the window of output row oh starts at input row oh*sh - ph (ph the top padding), columns
// likewise with pw (the left padding); the average pool's divisor also needs bottom and right.
//
// Max pooling: argmax holds the window-local index i*kw + j (int32) of the first maximum in
// row-major window order; NaN counts as the maximum (like numpy.argmax); padding is skipped, so argmax never names it.
// Both backward kernels are gathers (one thread per input element, no atomics): deterministic.
#include "fastconv_common.cuh"

// y[n, c, oh, ow] = max over (i, j) of x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (outside x: -inf,
// skipped), argmax the first (i*kw + j) reaching it; one thread per output element, in y's memory order.
template <typename T, typename I>
__global__ void fc_maxpool_fwd(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax, I N,
                               I C, I H, I W, I OH, I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh, I dw,
                               int nhwc) {
    FC_FOR(idx, N * C * OH * OW) {
        I n, c, oh, ow;
        fc_split((I)idx, C, OH, OW, nhwc, n, c, oh, ow);
        T best = fc_neg_inf<T>();
        int best_k = -1;  // the first element of x taken unconditionally: argmax never names padding
        for (I i = 0; i < kh; ++i) {
            const I h = fc_in_pos(oh, i, sh, ph, dh);
            if (h < 0 || h >= H) continue;  // padding is skipped, as in PyTorch
            for (I j = 0; j < kw; ++j) {
                const I w = fc_in_pos(ow, j, sw, pw, dw);
                if (w < 0 || w >= W) continue;
                const T v = x[fc_offset(n, c, h, w, C, H, W, nhwc)];
                if (best_k < 0 || (!fc_isnan(best) && (v > best || fc_isnan(v)))) {
                    best = v;
                    best_k = (int)(i * kw + j);
                }
            }
        }
        y[idx] = best;
        argmax[idx] = best_k;
    }
}

// dx[n, c, h, w] = sum of dout[n, c, oh, ow] over the windows whose argmax i*kw + j names (h, w), i.e.
// oh*sh - ph + i*dh == h and ow*sw - pw + j*dw == w, offsets (i, j) in row-major order; one thread per
// input element.
template <typename T, typename I>
__global__ void fc_maxpool_bwd(const T* __restrict__ dout, const int* __restrict__ argmax,
                               T* __restrict__ dx, I N, I C, I H, I W, I OH, I OW, I kh, I kw, I sh, I sw,
                               I ph, I pw, I dh, I dw, int nhwc) {
    FC_FOR(idx, N * C * H * W) {
        I n, c, h, w;
        fc_split((I)idx, C, H, W, nhwc, n, c, h, w);
        T sum = T(0);
        for (I i = 0; i < kh; ++i) {
            const I oh = fc_out_pos(h, i, sh, ph, dh, OH);
            if (oh < 0) continue;
            for (I j = 0; j < kw; ++j) {
                const I ow = fc_out_pos(w, j, sw, pw, dw, OW);
                if (ow < 0) continue;
                const I o = fc_offset(n, c, oh, ow, C, OH, OW, nhwc);
                if (argmax[o] == (int)(i * kw + j)) sum += dout[o];
            }
        }
        dx[idx] = sum;
    }
}

// PyTorch's average-pool window along one axis: output position o covers [o*s - p0, o*s - p0 + k),
// cut at size + p1 (the far padding; a ceil-mode window past it is never counted). *extent is the
// length of that cut window, padding included; [*start, *end) is its part inside [0, size).
template <typename I>
__device__ __forceinline__ void fc_avg_window(I o, I k, I s, I p0, I p1, I size, I* start, I* end,
                                              I* extent) {
    I a = o * s - p0;
    I b = a + k < size + p1 ? a + k : size + p1;
    *extent = b - a;
    *start = a > 0 ? a : 0;
    *end = b < size ? b : size;
}

// The divisor of window (oh, ow): extent_h*extent_w with count_include_pad, else the number of input
// elements it covers, (hend - hstart)*(wend - wstart).
template <typename I>
__device__ __forceinline__ I fc_avg_divisor(I oh, I ow, I kh, I kw, I sh, I sw, I pt, I pb, I pl, I pr,
                                            I H, I W, int count_include_pad) {
    I h0, h1, eh, w0, w1, ew;
    fc_avg_window(oh, kh, sh, pt, pb, H, &h0, &h1, &eh);
    fc_avg_window(ow, kw, sw, pl, pr, W, &w0, &w1, &ew);
    return count_include_pad ? eh * ew : (h1 - h0) * (w1 - w0);
}

// y[n, c, oh, ow] = (sum over h in [hstart, hend), then w in [wstart, wend), of x[n, c, h, w]) / divisor,
// the window and divisor of fc_avg_window / fc_avg_divisor; one thread per output element.
template <typename T, typename I>
__global__ void fc_avgpool_fwd(const T* __restrict__ x, T* __restrict__ y, I N, I C, I H, I W, I OH, I OW,
                               I kh, I kw, I sh, I sw, I pt, I pb, I pl, I pr, int count_include_pad,
                               int nhwc) {
    FC_FOR(idx, N * C * OH * OW) {
        I n, c, oh, ow;
        fc_split((I)idx, C, OH, OW, nhwc, n, c, oh, ow);
        I h0, h1, eh, w0, w1, ew;
        fc_avg_window(oh, kh, sh, pt, pb, H, &h0, &h1, &eh);
        fc_avg_window(ow, kw, sw, pl, pr, W, &w0, &w1, &ew);
        T sum = T(0);
        for (I h = h0; h < h1; ++h)
            for (I w = w0; w < w1; ++w) sum += x[fc_offset(n, c, h, w, C, H, W, nhwc)];
        y[idx] = sum / T(fc_avg_divisor(oh, ow, kh, kw, sh, sw, pt, pb, pl, pr, H, W, count_include_pad));
    }
}

// dx[n, c, h, w] = sum over the windows (oh, ow) covering (h, w), oh then ow increasing, of
// dout[n, c, oh, ow] / divisor(oh, ow); window oh covers h when oh*sh - pt <= h < oh*sh - pt + kh, i.e.
// ceil((h + pt - kh + 1) / sh) <= oh <= (h + pt) / sh (h < H <= H + pb, so the far cut never excludes
// it). One thread per input element.
template <typename T, typename I>
__global__ void fc_avgpool_bwd(const T* __restrict__ dout, T* __restrict__ dx, I N, I C, I H, I W, I OH,
                               I OW, I kh, I kw, I sh, I sw, I pt, I pb, I pl, I pr, int count_include_pad,
                               int nhwc) {
    FC_FOR(idx, N * C * H * W) {
        I n, c, h, w;
        fc_split((I)idx, C, H, W, nhwc, n, c, h, w);
        const I th = h + pt - kh + 1;
        const I tw = w + pl - kw + 1;
        const I oh0 = th > 0 ? (th + sh - 1) / sh : 0;
        const I ow0 = tw > 0 ? (tw + sw - 1) / sw : 0;
        const I oh1 = (h + pt) / sh < OH - 1 ? (h + pt) / sh : OH - 1;
        const I ow1 = (w + pl) / sw < OW - 1 ? (w + pl) / sw : OW - 1;
        T sum = T(0);
        for (I oh = oh0; oh <= oh1; ++oh) {
            for (I ow = ow0; ow <= ow1; ++ow) {
                const I d = fc_avg_divisor(oh, ow, kh, kw, sh, sw, pt, pb, pl, pr, H, W, count_include_pad);
                sum += dout[fc_offset(n, c, oh, ow, C, OH, OW, nhwc)] / T(d);
            }
        }
        dx[idx] = sum;
    }
}
