/* The streamed NLL's pass over the unembedding, fused by hand for x86-64 CPUs with AVX-512.
 *
 * For rows r < R of final hidden states h (R <= HS_MAX_ROWS, a handful in a fit) and
 * vocabulary rows v in [v0, v1) of W (row-major [vocab, D]) with optional bias b, it updates
 * the online-softmax state of headsteer/fitting/unembed.py in place:
 *
 *     l_rv = h_r . W_v + b_v
 *     m_r  <- max(m_r, max_v l_rv)                         (running max)
 *     z_r  <- z_r e^{m_r,old - m_r} + sum_v e^{l_rv - m_r}  (normaliser)
 *     s_r  <- s_r e^{m_r,old - m_r} + sum_v e^{l_rv - m_r} W_v
 *
 * so that logsumexp_v l_rv = m_r + log z_r and d logsumexp / d h_r = s_r / z_r. Why by hand:
 * with ten rows both products are skinny, and stock GEMMs run them at a fraction of this
 * CPU's speed; here W is read from memory once, in blocks of BLOCK rows that stay in the
 * core's L2 cache between the two products (the next block is prefetched meanwhile), and
 * the exponentials are vectorised. One call is one thread's share; the caller splits the
 * vocabulary between threads and merges their states (headsteer/fitting/nll_kernel.py).
 *
 * The bf16 entry point reads a bf16 W (half the memory traffic) and widens each element to fp32 as
 * it is loaded (exactly): the products are fp32, so only W's rounding to bf16 differs from fp32.
 * (avx512_bf16's dot products would also round h and the softmax weights, and measured no faster.)
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define BLOCK 64        /* vocabulary rows per block: 64 x 640 fp32 is 160 KiB, inside L2 */
#define HS_MAX_ROWS 32  /* rows per call: past ~30 rows the stock GEMMs of the torch loop are faster */
#define LOGIT_ROWS 10   /* logits tile: 10 hidden rows x 2 vocabulary rows = 20 accumulators */
#define LOGIT_COLS 2
#define SUM_ROWS 10     /* sum tile: 10 rows x 32 columns = 20 accumulators */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define INLINE static inline __attribute__((always_inline))

/* 1 where the kernels can run (AVX-512 F, BW, DQ and VL), else 0. */
int headsteer_nll_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}

int headsteer_nll_max_rows(void) { return HS_MAX_ROWS; }

int headsteer_nll_block(void) { return BLOCK; }

INLINE AVX512 __mmask16 lanes(long left) { return left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1); }

/* W[row][k .. k+16) as fp32, lanes past D zero; `bf16` is a constant once inlined, so each kernel has one path. */
INLINE AVX512 __m512 load_w(const void *W, long index, __mmask16 mask, int bf16) {
    if (bf16) {  /* bf16 is fp32's upper half: widen to 32 bits and shift up */
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)W + index));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    return _mm512_maskz_loadu_ps(mask, (const float *)W + index);
}

INLINE AVX512 void prefetch_w(const void *W, long index, int bf16) {  /* the 32 elements from index */
    const char *at = (const char *)W + index * (bf16 ? 2 : 4);
    _mm_prefetch(at, _MM_HINT_T0);
    if (!bf16) _mm_prefetch(at + 64, _MM_HINT_T0);
}

/* e^x for x <= 0: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error
   below 2e-7), scaled by 2^n; x below -87 gives 0 rather than a denormal. */
INLINE AVX512 __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x); /* ln2 in two parts, exact n ln2 */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* The softmax step of one block, per row: logits -> e^{l - m_new} in place; m, z updated; scale = e^{m_old - m_new}. */
INLINE AVX512 void softmax_block(float *logits, int R, int nb, float *m, float *z, float *scale) {
    for (int r = 0; r < R; r++) {
        float *l = logits + r * BLOCK;
        __m512 top = _mm512_set1_ps(m[r]);
        for (int j = 0; j < nb; j += 16)
            top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, lanes(nb - j), l + j));
        float m_new = _mm512_reduce_max_ps(top);
        scale[r] = isinf(m[r]) ? 0.0f : expf(m[r] - m_new);  /* the first block: nothing to rescale */
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < nb; j += 16) {
            __mmask16 k = lanes(nb - j);
            __m512 e = _mm512_maskz_mov_ps(k, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, l + j),
                                                                            _mm512_set1_ps(m_new))));
            _mm512_mask_storeu_ps(l + j, k, e);
            sum = _mm512_add_ps(sum, e);
        }
        z[r] = z[r] * scale[r] + _mm512_reduce_add_ps(sum);
        m[r] = m_new;
    }
}

/* ---- the two products of a block, W in fp32 or bf16 ---- */

/* out[a][b] = h_a . W_b for RR (a compile-time count once inlined) hidden rows and jj <= LOGIT_COLS vocabulary rows. */
INLINE AVX512 void logits_tile(const float *h, const void *W, long row, int D, int RR, int jj, float *out, int bf16) {
    __m512 acc[LOGIT_ROWS][LOGIT_COLS];
    for (int a = 0; a < RR; a++)
        for (int b = 0; b < LOGIT_COLS; b++) acc[a][b] = _mm512_setzero_ps();
    for (int k = 0; k < D; k += 16) {
        __mmask16 mask = lanes(D - k);
        __m512 w[LOGIT_COLS];
        for (int b = 0; b < LOGIT_COLS; b++) w[b] = load_w(W, (row + (b < jj ? b : 0)) * D + k, b < jj ? mask : 0, bf16);
        for (int a = 0; a < RR; a++) {
            __m512 x = _mm512_maskz_loadu_ps(mask, h + (long)a * D + k);
            for (int b = 0; b < LOGIT_COLS; b++) acc[a][b] = _mm512_fmadd_ps(x, w[b], acc[a][b]);
        }
    }
    /* constant bounds, so that gcc keeps acc in registers (a variable bound here puts it on the stack) */
    for (int a = 0; a < RR; a++)
        for (int b = 0; b < LOGIT_COLS; b++)
            if (b < jj) out[a * BLOCK + b] = _mm512_reduce_add_ps(acc[a][b]);
}

INLINE AVX512 void block_logits(const float *h, const void *W, long v, const float *bias, int R, int D, int nb,
                                float *logits, int bf16) {
    for (int r0 = 0; r0 < R; r0 += LOGIT_ROWS) {
        int rr = R - r0 < LOGIT_ROWS ? R - r0 : LOGIT_ROWS;
        for (int j0 = 0; j0 < nb; j0 += LOGIT_COLS) {
            int jj = nb - j0 < LOGIT_COLS ? nb - j0 : LOGIT_COLS;
            const float *hh = h + (long)r0 * D;
            float *o = logits + r0 * BLOCK + j0;
            switch (rr) {  /* one specialisation per row count keeps the accumulators in registers */
                case 10: logits_tile(hh, W, v + j0, D, 10, jj, o, bf16); break;
                case 9: logits_tile(hh, W, v + j0, D, 9, jj, o, bf16); break;
                case 8: logits_tile(hh, W, v + j0, D, 8, jj, o, bf16); break;
                case 7: logits_tile(hh, W, v + j0, D, 7, jj, o, bf16); break;
                case 6: logits_tile(hh, W, v + j0, D, 6, jj, o, bf16); break;
                case 5: logits_tile(hh, W, v + j0, D, 5, jj, o, bf16); break;
                case 4: logits_tile(hh, W, v + j0, D, 4, jj, o, bf16); break;
                case 3: logits_tile(hh, W, v + j0, D, 3, jj, o, bf16); break;
                case 2: logits_tile(hh, W, v + j0, D, 2, jj, o, bf16); break;
                default: logits_tile(hh, W, v + j0, D, 1, jj, o, bf16); break;
            }
        }
    }
    if (bias)
        for (int r = 0; r < R; r++)
            for (int j = 0; j < nb; j++) logits[r * BLOCK + j] += bias[v + j];
}

/* s_a[k:k+32] <- scale_a s_a[k:k+32] + sum_j p_aj W_j[k:k+32] for RR rows. With `next` (>= 0) it prefetches
   the same columns of the rows from `next` on, so that over all k the whole next block is on its way. */
INLINE AVX512 void sum_tile(const float *p, const void *W, long row, int D, int nb, int k, int RR, const float *scale,
                            float *s, long next, int bf16) {
    __mmask16 m0 = lanes(D - k), m1 = lanes(D - k - 16);
    __m512 acc[SUM_ROWS][2];
    for (int a = 0; a < RR; a++) {
        __m512 sc = _mm512_set1_ps(scale[a]);
        acc[a][0] = _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(m0, s + (long)a * D + k));
        acc[a][1] = _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(m1, s + (long)a * D + k + 16));
    }
    for (int j = 0; j < nb; j++) {
        __m512 w0 = load_w(W, (row + j) * D + k, m0, bf16);
        __m512 w1 = load_w(W, (row + j) * D + k + 16, m1, bf16);
        if (next >= 0) prefetch_w(W, (next + j) * D + k, bf16);
        for (int a = 0; a < RR; a++) {
            __m512 pj = _mm512_set1_ps(p[a * BLOCK + j]);
            acc[a][0] = _mm512_fmadd_ps(pj, w0, acc[a][0]);
            acc[a][1] = _mm512_fmadd_ps(pj, w1, acc[a][1]);
        }
    }
    for (int a = 0; a < RR; a++) {
        _mm512_mask_storeu_ps(s + (long)a * D + k, m0, acc[a][0]);
        _mm512_mask_storeu_ps(s + (long)a * D + k + 16, m1, acc[a][1]);
    }
}

INLINE AVX512 void block_sum(const float *p, const void *W, long v, int R, int D, int nb, const float *scale, float *s,
                             long next, int bf16) {
    for (int r0 = 0; r0 < R; r0 += SUM_ROWS) {
        int rr = R - r0 < SUM_ROWS ? R - r0 : SUM_ROWS;
        const float *pp = p + r0 * BLOCK, *sc = scale + r0;
        float *ss = s + (long)r0 * D;
        long nx = r0 == 0 ? next : -1;
        for (int k = 0; k < D; k += 32) {
            switch (rr) {
                case 10: sum_tile(pp, W, v, D, nb, k, 10, sc, ss, nx, bf16); break;
                case 9: sum_tile(pp, W, v, D, nb, k, 9, sc, ss, nx, bf16); break;
                case 8: sum_tile(pp, W, v, D, nb, k, 8, sc, ss, nx, bf16); break;
                case 7: sum_tile(pp, W, v, D, nb, k, 7, sc, ss, nx, bf16); break;
                case 6: sum_tile(pp, W, v, D, nb, k, 6, sc, ss, nx, bf16); break;
                case 5: sum_tile(pp, W, v, D, nb, k, 5, sc, ss, nx, bf16); break;
                case 4: sum_tile(pp, W, v, D, nb, k, 4, sc, ss, nx, bf16); break;
                case 3: sum_tile(pp, W, v, D, nb, k, 3, sc, ss, nx, bf16); break;
                case 2: sum_tile(pp, W, v, D, nb, k, 2, sc, ss, nx, bf16); break;
                default: sum_tile(pp, W, v, D, nb, k, 1, sc, ss, nx, bf16); break;
            }
        }
    }
}

INLINE AVX512 void nll_range(const float *h, const void *W, const float *bias, int R, int D, long v0, long v1,
                             float *m, float *z, float *s, int bf16) {
    float logits[HS_MAX_ROWS * BLOCK], scale[HS_MAX_ROWS];
    for (long v = v0; v < v1; v += BLOCK) {
        int nb = v1 - v < BLOCK ? (int)(v1 - v) : BLOCK;
        block_logits(h, W, v, bias, R, D, nb, logits, bf16);
        softmax_block(logits, R, nb, m, z, scale);
        block_sum(logits, W, v, R, D, nb, scale, s, v + 2 * BLOCK <= v1 ? v + BLOCK : -1, bf16);
    }
}

/* h fp32 [R, D], W fp32 [vocab, D] row-major, bias fp32 [vocab] or NULL; updates m [R], z [R], s [R, D]. */
AVX512 void headsteer_nll_f32(const float *h, const float *W, const float *bias, int R, int D, long v0, long v1,
                              float *m, float *z, float *s) {
    nll_range(h, W, bias, R, D, v0, v1, m, z, s, 0);
}

/* As headsteer_nll_f32 with W bf16 (stored as uint16). */
AVX512 void headsteer_nll_bf16(const float *h, const uint16_t *W, const float *bias, int R, int D, long v0, long v1,
                               float *m, float *z, float *s) {
    nll_range(h, W, bias, R, D, v0, v1, m, z, s, 1);
}
