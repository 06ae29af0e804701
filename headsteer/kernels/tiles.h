/* What the kernels share: the AVX-512 target, masks, weight loads (fp32 or bf16) and the two register tiles.
 *
 * Both tiles multiply a few fp32 rows with a row-major weight W [n, d] (fp32, or bf16 widened to fp32 as
 * it is loaded, exactly) and keep their accumulators in the 32 zmm registers:
 *
 *   dot_tile: out[a][b] = x_a . W_{row+b}            (a < RR rows, b < DOT_COLS weight rows)
 *   sum_tile: s_a[k:k+32] <- c_a s_a[k:k+32] + sum_j p_aj W_{row+j}[k:k+32]
 *
 * dot_tile is a product with W transposed (a linear layer's forward, the NLL's logits); sum_tile a product
 * with W itself (a linear layer's input gradient, the NLL's softmax-weighted sum). RR is a compile-time
 * constant at each call (see EACH_ROW_COUNT), so that gcc keeps the accumulators in registers.
 */
#ifndef HEADSTEER_TILES_H
#define HEADSTEER_TILES_H

#include <immintrin.h>
#include <stdint.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define INLINE static inline __attribute__((always_inline))

#define TILE_ROWS 10 /* rows of x (or p) per tile: 10 x 2 (or 10 x 2 vectors) = 20 accumulators */
#define DOT_COLS 2 /* DOT_TILE assumes 2 */

/* `CALL(rr)` with rr the constant equal to `rows` (1 .. TILE_ROWS): one specialisation per row count. */
#define EACH_ROW_COUNT(rows, CALL) \
    switch (rows) {                \
        case 10: CALL(10); break;  \
        case 9: CALL(9); break;    \
        case 8: CALL(8); break;    \
        case 7: CALL(7); break;    \
        case 6: CALL(6); break;    \
        case 5: CALL(5); break;    \
        case 4: CALL(4); break;    \
        case 3: CALL(3); break;    \
        case 2: CALL(2); break;    \
        default: CALL(1); break;   \
    }

INLINE AVX512 __mmask16 lanes(long left) { return left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1); }

/* W[index .. index+16) as fp32, masked lanes zero; `bf16` is a constant once inlined, so each kernel has one path. */
INLINE AVX512 __m512 load_w(const void *W, long index, __mmask16 mask, int bf16) {
    if (bf16) { /* bf16 is fp32's upper half: widen to 32 bits and shift up */
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)W + index));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    return _mm512_maskz_loadu_ps(mask, (const float *)W + index);
}

/* The 32 elements from index, into L2 rather than L1: the NLL of 10 rows 39.8 -> 38.2 ms, the suffix's linear layers
   29.8 -> 29.2 ms (benchmarks/kernel_ab.py, both builds side by side). */
INLINE AVX512 void prefetch_w(const void *W, long index, int bf16) {
    const char *at = (const char *)W + index * (bf16 ? 2 : 4);
    _mm_prefetch(at, _MM_HINT_T1);
    if (!bf16) _mm_prefetch(at + 64, _MM_HINT_T1);
}

/* out[a * ostride + b] = x_a . W_{row+b} for a < RR, b < JJ (<= DOT_COLS); x is [RR, d] with row stride d.
   With `ahead` (>= 0) it prefetches W rows ahead .. ahead + DOT_COLS - 1 meanwhile. RR and JJ are constants
   at each call (see DOT_TILE): with a variable either, gcc stores every accumulator to the stack each step. */
INLINE AVX512 void dot_tile(const float *x, const void *W, long row, int d, int RR, int JJ, float *out, long ostride,
                            long ahead, int bf16) {
    __m512 acc[TILE_ROWS][DOT_COLS];
    for (int a = 0; a < RR; a++)
        for (int b = 0; b < JJ; b++) acc[a][b] = _mm512_setzero_ps();
    for (int k = 0; k < d; k += 16) {
        __mmask16 mask = lanes(d - k);
        __m512 w[DOT_COLS];
        for (int b = 0; b < JJ; b++) w[b] = load_w(W, (row + b) * d + k, mask, bf16);
        if (ahead >= 0 && k % 32 == 0) /* prefetch_w takes 32 elements at a time */
            for (int b = 0; b < DOT_COLS; b++) prefetch_w(W, (ahead + b) * d + k, bf16);
        for (int a = 0; a < RR; a++) {
            __m512 xa = _mm512_maskz_loadu_ps(mask, x + (long)a * d + k);
            for (int b = 0; b < JJ; b++) acc[a][b] = _mm512_fmadd_ps(xa, w[b], acc[a][b]);
        }
    }
    for (int a = 0; a < RR; a++)
        for (int b = 0; b < JJ; b++) out[a * ostride + b] = _mm512_reduce_add_ps(acc[a][b]);
}

/* dot_tile with jj (1 .. DOT_COLS) weight rows, a constant in each branch. */
#define DOT_TILE(x, W, row, d, RR, jj, out, ostride, ahead, bf16)                      \
    ((jj) == DOT_COLS ? dot_tile(x, W, row, d, RR, DOT_COLS, out, ostride, ahead, bf16) \
                      : dot_tile(x, W, row, d, RR, 1, out, ostride, ahead, bf16))

/* s_a[k:k+32] <- c_a s_a[k:k+32] + sum_{j < nb} p[a * pstride + j] W_{row+j}[k:k+32] for a < RR, with c_a = scale[a]
   (scale NULL: 1). s is [RR, d] with row stride d. With `next` (>= 0) it prefetches the same columns of the
   rows from `next` on, so that over all k the whole next block of nb rows is on its way. */
INLINE AVX512 void sum_tile(const float *p, long pstride, const void *W, long row, int d, int nb, int k, int RR,
                            const float *scale, float *s, long next, int bf16) {
    __mmask16 m0 = lanes(d - k), m1 = lanes(d - k - 16);
    __m512 acc[TILE_ROWS][2];
    for (int a = 0; a < RR; a++) {
        acc[a][0] = _mm512_maskz_loadu_ps(m0, s + (long)a * d + k);
        acc[a][1] = _mm512_maskz_loadu_ps(m1, s + (long)a * d + k + 16);
        if (scale) {
            __m512 c = _mm512_set1_ps(scale[a]);
            acc[a][0] = _mm512_mul_ps(c, acc[a][0]);
            acc[a][1] = _mm512_mul_ps(c, acc[a][1]);
        }
    }
    for (int j = 0; j < nb; j++) {
        __m512 w0 = load_w(W, (row + j) * d + k, m0, bf16);
        __m512 w1 = load_w(W, (row + j) * d + k + 16, m1, bf16);
        if (next >= 0) prefetch_w(W, (next + j) * d + k, bf16);
        for (int a = 0; a < RR; a++) {
            __m512 pj = _mm512_set1_ps(p[a * pstride + j]);
            acc[a][0] = _mm512_fmadd_ps(pj, w0, acc[a][0]);
            acc[a][1] = _mm512_fmadd_ps(pj, w1, acc[a][1]);
        }
    }
    for (int a = 0; a < RR; a++) {
        _mm512_mask_storeu_ps(s + (long)a * d + k, m0, acc[a][0]);
        _mm512_mask_storeu_ps(s + (long)a * d + k + 16, m1, acc[a][1]);
    }
}

/* 1 where the kernels can run (AVX-512 F, BW, DQ and VL), else 0. */
int headsteer_supported(void);

#endif
