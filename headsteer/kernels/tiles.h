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
 *
 * bf16 W is read 32 elements at a time and widened as even and odd columns (load_w_pairs): two instructions
 * where widening 16 at a time takes four, which made the NLL of 10 rows 37.3 -> 31.7 ms with bf16 W
 * (benchmarks/kernel_ab.py --bf16). dot_tile takes its rows split to match (split_rows, once per call);
 * sum_tile splits and interleaves its accumulators itself.
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
INLINE AVX512 __mmask32 lanes32(long left) {
    return left >= 32 ? 0xFFFFFFFFu : left <= 0 ? 0 : (__mmask32)((1u << left) - 1);
}

/* The 32 elements from index, into L2 rather than L1: the NLL of 10 rows 39.8 -> 38.2 ms, the suffix's linear layers
   29.8 -> 29.2 ms (benchmarks/kernel_ab.py, both builds side by side). */
INLINE AVX512 void prefetch_w(const void *W, long index, int bf16) {
    const char *at = (const char *)W + index * (bf16 ? 2 : 4);
    _mm_prefetch(at, _MM_HINT_T1);
    if (!bf16) _mm_prefetch(at + 64, _MM_HINT_T1);
}

/* bf16 W's 32 elements from index, in one 64-byte load (masked lanes zero), as two fp32 vectors: `even` holds
   elements 0, 2, .., 30 and `odd` 1, 3, .., 31. bf16 is fp32's upper half, and each 32-bit lane holds an even
   element in its low half and the next odd one in its high half: a shift and a mask widen both exactly, two
   instructions for 32 elements (widening each half with a zero-extension and a shift takes four). */
INLINE AVX512 void load_w_pairs(const void *W, long index, __mmask32 mask, __m512 *even, __m512 *odd) {
    __m512i raw = _mm512_maskz_loadu_epi16(mask, (const uint16_t *)W + index);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32((int)0xFFFF0000u)));
}

INLINE long round32(long d) { return (d + 31) / 32 * 32; }

/* v held in a register from here on. Without it gcc folds a row of x's load into each FMA that reads it, once per W
   row: two loads per FMA pair, and 512-bit loads issue two a cycle, so the dot tile waited on its loads (with it, the
   bf16 NLL of 10 rows 30.2 -> 29.7 ms and the linear layers after it 20.3 -> 19.4, benchmarks/kernel_ab.py --bf16,
   means of 6). An empty asm that may change v: the compiler cannot load v again, it has to keep the value it has. */
#define IN_REGISTER(v) __asm__("" : "+v"(v))

/* 32 consecutive elements (lo: the first 16, hi: the next) as load_w_pairs orders them: even ones, then odd ones. */
INLINE AVX512 void split32(__m512 lo, __m512 hi, __m512 *even, __m512 *odd) {
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odds = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    *even = _mm512_permutex2var_ps(lo, evens, hi);
    *odd = _mm512_permutex2var_ps(lo, odds, hi);
}

/* out [R, round32(d)] = x [R, d] with each row's columns in load_w_pairs' order, 32 at a time (even columns, then
   odd ones; zeros past d): the rows a dot_tile with bf16 W takes. Two permutes per 32 columns: an element at a time,
   this took up to a millisecond of each bf16 step's linear layers (benchmarks/kernel_ab.py --bf16, two runs:
   22.2 -> 20.7 and 20.5 -> 20.2 ms). */
INLINE AVX512 void split_rows(const float *x, int R, int d, float *out) {
    long stride = round32(d);
    for (int a = 0; a < R; a++)
        for (long k = 0; k < stride; k += 32) {
            const float *row = x + (long)a * d + k;
            __m512 even, odd;
            split32(_mm512_maskz_loadu_ps(lanes(d - k), row), _mm512_maskz_loadu_ps(lanes(d - k - 16), row + 16), &even,
                    &odd);
            _mm512_storeu_ps(out + a * stride + k, even);
            _mm512_storeu_ps(out + a * stride + k + 16, odd);
        }
}

/* The sums of the lanes of p, q, r and t, in that order: four reductions sharing their shuffles (14 instructions,
   where one at a time takes about 32). */
INLINE AVX512 __m128 sum4(__m512 p, __m512 q, __m512 r, __m512 t) {
    /* 128-bit quarters: [p0+p2, p1+p3, q0+q2, q1+q3] and the same of r and t */
    __m512 pq = _mm512_add_ps(_mm512_shuffle_f32x4(p, q, 0x44), _mm512_shuffle_f32x4(p, q, 0xEE));
    __m512 rt = _mm512_add_ps(_mm512_shuffle_f32x4(r, t, 0x44), _mm512_shuffle_f32x4(r, t, 0xEE));
    /* quarter i: four partial sums of the i-th vector */
    __m512 all = _mm512_add_ps(_mm512_shuffle_f32x4(pq, rt, 0x88), _mm512_shuffle_f32x4(pq, rt, 0xDD));
    all = _mm512_add_ps(all, _mm512_permute_ps(all, 0x4E));
    all = _mm512_add_ps(all, _mm512_permute_ps(all, 0xB1)); /* each quarter: its vector's sum, four times */
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), all));
}

/* out[a * ostride + b] = x_a . W_{row+b} for a < RR, b < JJ (<= DOT_COLS). With fp32 W, x is [RR, d] with row stride
   d; with bf16 W, x is split_rows' copy (its columns in load_w_pairs' order, row stride round32(d)). With `ahead`
   (>= 0) it prefetches W rows ahead .. ahead + DOT_COLS - 1 meanwhile. RR and JJ are constants at each call (see
   DOT_TILE): with a variable either, gcc stores every accumulator to the stack each step. */
INLINE AVX512 void dot_tile(const float *x, const void *W, long row, int d, int RR, int JJ, float *out, long ostride,
                            long ahead, int bf16) {
    __m512 acc[TILE_ROWS][DOT_COLS];
    for (int a = 0; a < RR; a++)
        for (int b = 0; b < JJ; b++) acc[a][b] = _mm512_setzero_ps();
    if (bf16) {
        long xstride = round32(d);
        for (int k = 0; k < d; k += 32) {
            __m512 even[DOT_COLS], odd[DOT_COLS];
            for (int b = 0; b < JJ; b++) load_w_pairs(W, (row + b) * d + k, lanes32(d - k), &even[b], &odd[b]);
            if (ahead >= 0)
                for (int b = 0; b < DOT_COLS; b++) prefetch_w(W, (ahead + b) * d + k, 1);
            for (int a = 0; a < RR; a++) {
                __m512 xe = _mm512_loadu_ps(x + a * xstride + k), xo = _mm512_loadu_ps(x + a * xstride + k + 16);
                IN_REGISTER(xe);
                IN_REGISTER(xo);
                for (int b = 0; b < JJ; b++) acc[a][b] = _mm512_fmadd_ps(xo, odd[b], _mm512_fmadd_ps(xe, even[b], acc[a][b]));
            }
        }
    } else
        for (int k = 0; k < d; k += 16) {
            __mmask16 mask = lanes(d - k);
            __m512 w[DOT_COLS];
            for (int b = 0; b < JJ; b++) w[b] = _mm512_maskz_loadu_ps(mask, (const float *)W + (row + b) * d + k);
            if (ahead >= 0 && k % 32 == 0) /* prefetch_w takes 32 elements at a time */
                for (int b = 0; b < DOT_COLS; b++) prefetch_w(W, (ahead + b) * d + k, 0);
            for (int a = 0; a < RR; a++) {
                __m512 xa = _mm512_maskz_loadu_ps(mask, x + (long)a * d + k);
                IN_REGISTER(xa);
                for (int b = 0; b < JJ; b++) acc[a][b] = _mm512_fmadd_ps(xa, w[b], acc[a][b]);
            }
        }
    if (JJ == DOT_COLS) { /* two rows' pairs of sums at a time */
        for (int a = 0; a < RR; a += 2) {
            __m512 zero = _mm512_setzero_ps();
            __m128 sums = sum4(acc[a][0], acc[a][1], a + 1 < RR ? acc[a + 1][0] : zero, a + 1 < RR ? acc[a + 1][1] : zero);
            _mm_storel_pi((__m64 *)(out + a * ostride), sums);
            if (a + 1 < RR) _mm_storeh_pi((__m64 *)(out + (a + 1) * ostride), sums);
        }
    } else
        for (int a = 0; a < RR; a++)
            for (int b = 0; b < JJ; b++) out[a * ostride + b] = _mm512_reduce_add_ps(acc[a][b]);
}

/* dot_tile with jj (1 .. DOT_COLS) weight rows, a constant in each branch. */
#define DOT_TILE(x, W, row, d, RR, jj, out, ostride, ahead, bf16)                      \
    ((jj) == DOT_COLS ? dot_tile(x, W, row, d, RR, DOT_COLS, out, ostride, ahead, bf16) \
                      : dot_tile(x, W, row, d, RR, 1, out, ostride, ahead, bf16))

/* s_a[k:k+32] <- c_a s_a[k:k+32] + sum_{j < nb} p[a * pstride + j] W_{row+j}[k:k+32] for a < RR, with c_a = scale[a]
   (scale NULL: 1). s is [RR, d] with row stride d. With `next` (>= 0) it prefetches the same columns of the
   rows from `next` on, so that over all k the whole next block of nb rows is on its way. With bf16 W the
   accumulators hold s's even and odd columns (load_w_pairs' order): s is split so on loading, interleaved
   back on storing, once per tile. */
INLINE AVX512 void sum_tile(const float *p, long pstride, const void *W, long row, int d, int nb, int k, int RR,
                            const float *scale, float *s, long next, int bf16) {
    __mmask16 m0 = lanes(d - k), m1 = lanes(d - k - 16);
    __m512 acc[TILE_ROWS][2];
    for (int a = 0; a < RR; a++) {
        __m512 lo = _mm512_maskz_loadu_ps(m0, s + (long)a * d + k), hi = _mm512_maskz_loadu_ps(m1, s + (long)a * d + k + 16);
        if (bf16)
            split32(lo, hi, &acc[a][0], &acc[a][1]);
        else {
            acc[a][0] = lo;
            acc[a][1] = hi;
        }
        if (scale) {
            __m512 c = _mm512_set1_ps(scale[a]);
            acc[a][0] = _mm512_mul_ps(c, acc[a][0]);
            acc[a][1] = _mm512_mul_ps(c, acc[a][1]);
        }
    }
    __mmask32 m = lanes32(d - k);
    for (int j = 0; j < nb; j++) {
        __m512 w0, w1;
        if (bf16)
            load_w_pairs(W, (row + j) * d + k, m, &w0, &w1);
        else {
            w0 = _mm512_maskz_loadu_ps(m0, (const float *)W + (row + j) * d + k);
            w1 = _mm512_maskz_loadu_ps(m1, (const float *)W + (row + j) * d + k + 16);
        }
        if (next >= 0) prefetch_w(W, (next + j) * d + k, bf16);
        for (int a = 0; a < RR; a++) {
            __m512 pj = _mm512_set1_ps(p[a * pstride + j]);
            acc[a][0] = _mm512_fmadd_ps(pj, w0, acc[a][0]);
            acc[a][1] = _mm512_fmadd_ps(pj, w1, acc[a][1]);
        }
    }
    const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    for (int a = 0; a < RR; a++) {
        __m512 lo = bf16 ? _mm512_permutex2var_ps(acc[a][0], first, acc[a][1]) : acc[a][0];
        __m512 hi = bf16 ? _mm512_permutex2var_ps(acc[a][0], second, acc[a][1]) : acc[a][1];
        _mm512_mask_storeu_ps(s + (long)a * d + k, m0, lo);
        _mm512_mask_storeu_ps(s + (long)a * d + k + 16, m1, hi);
    }
}

/* 1 where the kernels can run (AVX-512 F, BW, DQ and VL), else 0. */
int headsteer_supported(void);

#endif
