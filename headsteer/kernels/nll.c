/* The streamed NLL's pass over the unembedding, fused by hand for x86-64 CPUs with AVX-512.
 *
 * For rows r < R of final hidden states h (R <= HS_NLL_MAX_ROWS_BF16, a handful in a fit) and
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
 * the exponentials are vectorised. The vocabulary is split into one share per thread (OpenMP,
 * torch's own thread pool); each share keeps its own state, which the caller merges
 * (headsteer/fitting/nll_kernel.py).
 *
 * With bf16 W each element is widened to fp32 as it is loaded (exactly): the products are
 * fp32, so only W's rounding to bf16 differs from fp32. (avx512_bf16's dot products would
 * also round h and the softmax weights, and run at half the rate of fp32 FMAs on the CPU
 * this was written on: RESEARCH.md.)
 */
#include <math.h>
#include <omp.h>

#include "tiles.h"

#define BLOCK 64           /* vocabulary rows per block: 64 x 640 fp32 is 160 KiB, inside L2 */
/* Rows per call (benchmarks/kernel_rows.py). fp32 W: 14% faster than the torch loop at 64 rows, 5% at 96, 3% at 128,
   11% slower at 256. bf16 W: faster than the torch loop on the same bf16 W at every count to 256 (5% at 256). */
#define HS_NLL_MAX_ROWS 64
#define HS_NLL_MAX_ROWS_BF16 256

int headsteer_nll_max_rows(int bf16) { return bf16 ? HS_NLL_MAX_ROWS_BF16 : HS_NLL_MAX_ROWS; }

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
        scale[r] = isinf(m[r]) ? 0.0f : expf(m[r] - m_new); /* the first block: nothing to rescale */
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

/* logits[r][j] = h_r . W_{v+j} + b_{v+j} for the block's nb vocabulary rows, prefetching the block from `next`
   (-1: none) meanwhile (here rather than in block_sum: W streams in while the logits are computed); with bf16 W,
   h is split_rows' copy. */
INLINE AVX512 void block_logits(const float *h, const void *W, long v, const float *bias, int R, int D, int nb,
                                float *logits, long next, int bf16) {
    long h_row = bf16 ? round32(D) : D;
    for (int r0 = 0; r0 < R; r0 += TILE_ROWS) {
        int rr = R - r0 < TILE_ROWS ? R - r0 : TILE_ROWS;
        for (int j0 = 0; j0 < nb; j0 += DOT_COLS) {
            int jj = nb - j0 < DOT_COLS ? nb - j0 : DOT_COLS;
            long ahead = r0 == 0 && next >= 0 ? next + j0 : -1; /* the same rows of the next block */
#define DOT(RR) DOT_TILE(h + r0 * h_row, W, v + j0, D, RR, jj, logits + r0 * BLOCK + j0, BLOCK, ahead, bf16)
            EACH_ROW_COUNT(rr, DOT)
#undef DOT
        }
    }
    if (bias)
        for (int r = 0; r < R; r++)
            for (int j = 0; j < nb; j++) logits[r * BLOCK + j] += bias[v + j];
}

/* s_r <- scale_r s_r + sum_j p_rj W_{v+j} (the block is in L2 from block_logits). */
INLINE AVX512 void block_sum(const float *p, const void *W, long v, int R, int D, int nb, const float *scale, float *s,
                             int bf16) {
    for (int r0 = 0; r0 < R; r0 += TILE_ROWS) {
        int rr = R - r0 < TILE_ROWS ? R - r0 : TILE_ROWS;
        for (int k = 0; k < D; k += 32) {
#define SUM(RR) sum_tile(p + r0 * BLOCK, BLOCK, W, v, D, nb, k, RR, scale + r0, s + (long)r0 * D, -1, bf16)
            EACH_ROW_COUNT(rr, SUM)
#undef SUM
        }
    }
}

INLINE AVX512 void nll_range(const float *h, const void *W, const float *bias, int R, int D, long v0, long v1,
                             float *m, float *z, float *s, int bf16) {
    float logits[HS_NLL_MAX_ROWS_BF16 * BLOCK], scale[HS_NLL_MAX_ROWS_BF16];
    for (long v = v0; v < v1; v += BLOCK) {
        int nb = v1 - v < BLOCK ? (int)(v1 - v) : BLOCK;
        block_logits(h, W, v, bias, R, D, nb, logits, v + 2 * BLOCK <= v1 ? v + BLOCK : -1, bf16);
        softmax_block(logits, R, nb, m, z, scale);
        block_sum(logits, W, v, R, D, nb, scale, s, bf16);
    }
}

/* One function per weight dtype, called from the OpenMP region, so that `bf16` is a constant where the tiles
   are compiled: inside the region it would be a variable, and the tiles' accumulators would spill to the stack. */
static AVX512 __attribute__((noinline)) void nll_range_f32(const float *h, const void *W, const float *bias, int R,
                                                           int D, long v0, long v1, float *m, float *z, float *s) {
    nll_range(h, W, bias, R, D, v0, v1, m, z, s, 0);
}

static AVX512 __attribute__((noinline)) void nll_range_bf16(const float *h, const void *W, const float *bias, int R,
                                                            int D, long v0, long v1, float *m, float *z, float *s) {
    nll_range(h, W, bias, R, D, v0, v1, m, z, s, 1);
}

/* h fp32 [R, D]; W [V, D] row-major, fp32 (bf16 = 0) or bf16 stored as uint16 (bf16 = 1); bias fp32 [V] or NULL;
   split: scratch of R x round32(D) floats with bf16 W (else unused).
   Share t of `shares` (the vocabulary split at whole blocks) updates m [shares, R], z [shares, R], s [shares, R, D]
   at index t, which the caller initialises (-inf, 0, 0) and merges. */
AVX512 void headsteer_nll(const float *h, const void *W, const float *bias, int R, int D, long V, int shares, float *m,
                          float *z, float *s, int bf16, float *split) {
    if (bf16) { /* the rows as dot_tile takes them with bf16 W */
        split_rows(h, R, D, split);
        h = split;
    }
#pragma omp parallel num_threads(shares)
    for (int t = omp_get_thread_num(); t < shares; t += omp_get_num_threads()) { /* fewer threads: more shares each */
        long v0 = V * t / shares / BLOCK * BLOCK, v1 = t + 1 == shares ? V : V * (t + 1) / shares / BLOCK * BLOCK;
        float *mt = m + (long)t * R, *zt = z + (long)t * R, *st = s + (long)t * R * D;
        (bf16 ? nll_range_bf16 : nll_range_f32)(h, W, bias, R, D, v0, v1, mt, zt, st);
    }
}
