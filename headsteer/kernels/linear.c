/* A linear layer for a few rows, and its input gradient, by hand for x86-64 CPUs with AVX-512.
 *
 * For x [M, K] (M <= HS_LINEAR_MAX_ROWS), W [N, K] row-major (torch's nn.Linear weight) and bias [N]:
 *
 *     forward:         y  = x W^T + b      y [M, N]
 *     input gradient:  dx = g W            g [M, N], dx [M, K]
 *
 * Why by hand: in a fit step each layer above Δ's runs on a handful of rows (one per training
 * pair), and stock GEMMs run such skinny products well below the speed at which this CPU reads
 * W; the forward's layout (x W^T, every output a dot product of two rows) is their slowest.
 * Here each product reads W once, streaming: the forward in pairs of W rows against every row
 * of x (dot_tile), the gradient in blocks of BLOCK rows kept in L2 while every column of the
 * block is accumulated (sum_tile), the next block prefetched. W's rows are split into one
 * share per thread (OpenMP: torch's own thread pool); the gradient's shares each sum into
 * their own [M, K], added up at the end.
 */
#include <omp.h>
#include <string.h>

#include "tiles.h"

#define BLOCK 64 /* W rows per block, and the unit in which W is split between threads */
/* Rows per call: past them torch's GEMMs on the fp32 weights are as fast on an Intel Xeon (Emerald Rapids;
   benchmarks/kernel_rows.py: the same at 32 rows with fp32 weights; with bf16 copies 7% faster at 48 rows, 6% slower
   at 60). On an AMD EPYC (Zen 5) torch's GEMMs take twice the kernel's time at every count up to 60, with either
   weights: there it takes 64. */
#define HS_LINEAR_MAX_ROWS 32
#define HS_LINEAR_MAX_ROWS_BF16 48
#define HS_LINEAR_MAX_ROWS_AMD 64
#define AHEAD 4 /* how many W rows ahead the forward prefetches */

int headsteer_linear_max_rows(int bf16) {
    __builtin_cpu_init();
    if (__builtin_cpu_is("amd")) return HS_LINEAR_MAX_ROWS_AMD;
    return bf16 ? HS_LINEAR_MAX_ROWS_BF16 : HS_LINEAR_MAX_ROWS;
}

/* Share t of `shares`: W rows [*r0, *r1), split at whole blocks. */
INLINE void share_rows(long N, int t, int shares, long *r0, long *r1) {
    *r0 = N * t / shares / BLOCK * BLOCK;
    *r1 = t + 1 == shares ? N : N * (t + 1) / shares / BLOCK * BLOCK;
}

/* y[:, r0:r1] = x W[r0:r1]^T + b[r0:r1]: W in blocks of BLOCK rows, each row group of x (in L1) against a whole
   block (in L2 after the first group) a pair of W rows at a time, the first group prefetching AHEAD rows on.
   (W's pair outermost instead keeps the pair in L1 but reads every row group of x from L2 for each pair: with
   more than one group, as the sequence loss's 20 to 60 rows, that read is the bound.) With bf16 W, x is
   split_rows' copy. */
INLINE AVX512 void forward_rows(const float *x, const void *W, const float *bias, float *y, int M, int K, long N, long r0,
                                long r1, int bf16) {
    long x_row = bf16 ? round32(K) : K;
    for (long v = r0; v < r1; v += BLOCK) {
        long v1 = r1 - v < BLOCK ? r1 : v + BLOCK;
        for (int a0 = 0; a0 < M; a0 += TILE_ROWS) {
            int rr = M - a0 < TILE_ROWS ? M - a0 : TILE_ROWS;
            for (long j0 = v; j0 < v1; j0 += DOT_COLS) {
                int jj = v1 - j0 < DOT_COLS ? (int)(v1 - j0) : DOT_COLS;
                long ahead = a0 == 0 && j0 + AHEAD + DOT_COLS <= r1 ? j0 + AHEAD : -1;
#define DOT(RR) DOT_TILE(x + a0 * x_row, W, j0, K, RR, jj, y + (long)a0 * N + j0, N, ahead, bf16)
                EACH_ROW_COUNT(rr, DOT)
#undef DOT
            }
        }
    }
    if (bias)
        for (int a = 0; a < M; a++)
            for (long j = r0; j < r1; j++) y[(long)a * N + j] += bias[j];
}

/* dx = g[:, r0:r1] W[r0:r1], block by block (the next block prefetched). */
INLINE AVX512 void input_grad_rows(const float *g, const void *W, float *dx, int M, long N, int K, long r0, long r1,
                                   int bf16) {
    memset(dx, 0, sizeof(float) * (size_t)M * (size_t)K);
    for (long v = r0; v < r1; v += BLOCK) {
        int nb = r1 - v < BLOCK ? (int)(r1 - v) : BLOCK;
        long next = v + BLOCK < r1 ? v + BLOCK : -1;
        for (int a0 = 0; a0 < M; a0 += TILE_ROWS) {
            int rr = M - a0 < TILE_ROWS ? M - a0 : TILE_ROWS;
            long nx = a0 == 0 ? next : -1;
            for (int k = 0; k < K; k += 32) {
#define SUM(RR) sum_tile(g + (long)a0 * N + v, N, W, v, K, nb, k, RR, NULL, dx + (long)a0 * K, nx, bf16)
                EACH_ROW_COUNT(rr, SUM)
#undef SUM
            }
        }
    }
}

/* One function per weight dtype and product, called from the OpenMP regions, so that `bf16` is a constant where the
   tiles are compiled: inlined into a region (or with `bf16` a variable) the tiles' accumulators spill to the stack. */
static AVX512 __attribute__((noinline)) void forward_f32(const float *x, const void *W, const float *bias, float *y,
                                                         int M, int K, long N, long r0, long r1) {
    forward_rows(x, W, bias, y, M, K, N, r0, r1, 0);
}

static AVX512 __attribute__((noinline)) void forward_bf16(const float *x, const void *W, const float *bias, float *y,
                                                          int M, int K, long N, long r0, long r1) {
    forward_rows(x, W, bias, y, M, K, N, r0, r1, 1);
}

static AVX512 __attribute__((noinline)) void input_grad_f32(const float *g, const void *W, float *dx, int M, long N,
                                                            int K, long r0, long r1) {
    input_grad_rows(g, W, dx, M, N, K, r0, r1, 0);
}

static AVX512 __attribute__((noinline)) void input_grad_bf16(const float *g, const void *W, float *dx, int M, long N,
                                                             int K, long r0, long r1) {
    input_grad_rows(g, W, dx, M, N, K, r0, r1, 1);
}

/* y [M, N] = x [M, K] W^T + bias; W [N, K] fp32 (bf16 = 0) or bf16 stored as uint16 (bf16 = 1), bias [N] fp32 or
   NULL; split: scratch of M x round32(K) floats with bf16 W (else unused). */
AVX512 void headsteer_linear(const float *x, const void *W, const float *bias, float *y, int M, int K, long N,
                             int shares, int bf16, float *split) {
    if (bf16) { /* the rows as dot_tile takes them with bf16 W */
        split_rows(x, M, K, split);
        x = split;
    }
#pragma omp parallel num_threads(shares)
    for (int t = omp_get_thread_num(); t < shares; t += omp_get_num_threads()) { /* fewer threads: more shares each */
        long r0, r1;
        share_rows(N, t, shares, &r0, &r1);
        (bf16 ? forward_bf16 : forward_f32)(x, W, bias, y, M, K, N, r0, r1);
    }
}

/* dx [M, K] = g [M, N] W, W as in headsteer_linear; scratch holds (shares - 1) x M x K floats. */
AVX512 void headsteer_linear_input_grad(const float *g, const void *W, float *dx, int M, long N, int K, int shares,
                                        float *scratch, int bf16) {
    long blocks = (N + BLOCK - 1) / BLOCK;
    if (shares > blocks) shares = blocks > 0 ? (int)blocks : 1; /* no share without a block: each costs a sum */
#pragma omp parallel num_threads(shares)
    for (int t = omp_get_thread_num(); t < shares; t += omp_get_num_threads()) {
        long r0, r1;
        share_rows(N, t, shares, &r0, &r1);
        float *partial = t == 0 ? dx : scratch + (long)(t - 1) * M * K; /* each share's own sum */
        (bf16 ? input_grad_bf16 : input_grad_f32)(g, W, partial, M, N, K, r0, r1);
    }
    for (int t = 1; t < shares; t++)
        for (long i = 0; i < (long)M * K; i++) dx[i] += scratch[(long)(t - 1) * M * K + i];
}
