// 2-D max pooling forward and backward, for the fastconv CuPy backend.
//
// argmax holds the window-local index i*kw + j (int32) of the first maximum in row-major window
// order; NaN counts as the maximum (like numpy.argmax); padding is -inf, so a window lying wholly in
// the padding yields -inf with argmax 0, and its gradient is dropped.
#include "fastconv_common.cuh"

// y[p, oh, ow] = max over (i, j) of x[p, oh*sh - ph + i*dh, ow*sw - pw + j*dw] with p = n*C + c;
// one thread per output element, the window scanned in row-major (i, j) order.
template <typename T, typename I>
__global__ void fc_maxpool_fwd(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax,
                               I NC, I H, I W, I OH, I OW, I kh, I kw, I sh, I sw, I ph, I pw, I dh,
                               I dw) {
    FC_FOR(idx, NC * OH * OW) {
        const I e = (I)idx;
        const I ow = e % OW;
        const I pr = e / OW;
        const I oh = pr % OH;
        const I p = pr / OH;
        const T* plane = x + p * H * W;
        T best = fc_neg_inf<T>();
        int best_k = 0;
        for (I i = 0; i < kh; ++i) {
            const I h = fc_in_pos(oh, i, sh, ph, dh);
            if (h < 0 || h >= H) continue;  // padding is -inf: it never beats best strictly
            for (I j = 0; j < kw; ++j) {
                const I w = fc_in_pos(ow, j, sw, pw, dw);
                if (w < 0 || w >= W) continue;
                const T v = plane[h * W + w];
                if (!fc_isnan(best) && (v > best || fc_isnan(v))) {
                    best = v;
                    best_k = (int)(i * kw + j);
                }
            }
        }
        y[idx] = best;
        argmax[idx] = best_k;
    }
}

// dx[p, h, w] = sum of dout[p, oh, ow] over the windows whose argmax i*kw + j names (h, w), i.e.
// oh*sh - ph + i*dh == h and ow*sw - pw + j*dw == w (a gather: one thread per input pixel, offsets
// (i, j) in row-major order, no atomics, deterministic).
template <typename T, typename I>
__global__ void fc_maxpool_bwd(const T* __restrict__ dout, const int* __restrict__ argmax,
                               T* __restrict__ dx, I NC, I H, I W, I OH, I OW, I kh, I kw, I sh, I sw,
                               I ph, I pw, I dh, I dw) {
    FC_FOR(idx, NC * H * W) {
        const I e = (I)idx;
        const I w = e % W;
        const I pr = e / W;
        const I h = pr % H;
        const I p = pr / H;
        const I base = p * OH * OW;
        T sum = T(0);
        for (I i = 0; i < kh; ++i) {
            const I oh = fc_out_pos(h, i, sh, ph, dh, OH);
            if (oh < 0) continue;
            for (I j = 0; j < kw; ++j) {
                const I ow = fc_out_pos(w, j, sw, pw, dw, OW);
                if (ow < 0) continue;
                const I o = base + oh * OW + ow;
                if (argmax[o] == (int)(i * kw + j)) sum += dout[o];
            }
        }
        dx[idx] = sum;
    }
}
