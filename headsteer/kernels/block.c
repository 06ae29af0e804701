/* The small operations of a decoder layer's suffix step, forward and backward, by hand.
 *
 * A fit step runs each block above Delta's layer on a handful of rows against the prefix's KV cache
 * (headsteer/fitting/fused_block.py). Between its linear layers (linear.c) a block is about a hundred
 * tensor operations each way on ten rows, each costing torch more to dispatch than its arithmetic;
 * here each stage between two linear layers is one call. For fp32 tensors, all contiguous:
 *
 *   rms_norm:       out = add + u r (c + w),  r = 1 / sqrt(mean(u^2) + eps) per row (add may be NULL)
 *   rms_norm_grad:  out = add + r g' - u r^3 mean(g' u),  g' = g (c + w)  (the gradient for u)
 *   qk:             per head, the RMSNorm (if any) then rotary, u cos + rotate_half(u) sin, from the
 *                   linear layer's [n, S, heads, d] into the cache's [n, heads, S, d]; qk_grad its gradient
 *   attention:      P = softmax(s q K^T + mask), z = P V (+ Delta at suffix position 0), z as hook_z [n, S, H, d];
 *                   query head h reads key/value head h / (H / H_kv); attention_grad its gradients for q,
 *                   and for the suffix's own keys and values (the cache's last S)
 *
 * The rows split between `threads` OpenMP threads (torch's pool) where there are enough of them.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "tiles.h"

#define PARALLEL_WORK 65536 /* elements of work below which a call stays on one thread */

/* The scale of a row's RMSNorm: 1 / sqrt(mean(u^2) + eps). */
static float inverse_rms(const float *u, int dim, float eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < dim; j++) sum += u[j] * u[j];
    return 1.0f / sqrtf(sum / (float)dim + eps);
}

/* The gradient for u of u r scale (r as inverse_rms gives it) from g, plus add (or NULL), into out. */
static void norm_grad_row(const float *u, float r, const float *scale, const float *g, int dim, const float *add,
                          float *out) {
    float mean = 0.0f;
#pragma omp simd reduction(+ : mean)
    for (int j = 0; j < dim; j++) mean += g[j] * scale[j] * u[j];
    float c = r * r * r * (mean / (float)dim);
#pragma omp simd
    for (int j = 0; j < dim; j++) out[j] = (add ? add[j] : 0.0f) + r * (g[j] * scale[j]) - u[j] * c;
}

void headsteer_rms_norm(const float *u, const float *scale, float eps, long rows, int dim, const float *add, float *out,
                        float *r, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * dim >= PARALLEL_WORK)
    for (long i = 0; i < rows; i++) {
        const float *ui = u + i * dim;
        float ri = inverse_rms(ui, dim, eps);
        r[i] = ri;
        for (int j = 0; j < dim; j++) out[i * dim + j] = (add ? add[i * dim + j] : 0.0f) + ui[j] * ri * scale[j];
    }
}

void headsteer_rms_norm_grad(const float *u, const float *r, const float *scale, const float *g, long rows, int dim,
                             const float *add, float *out, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * dim >= PARALLEL_WORK)
    for (long i = 0; i < rows; i++) norm_grad_row(u + i * dim, r[i], scale, g + i * dim, dim, add ? add + i * dim : NULL,
                                                  out + i * dim);
}

/* u [n, S, heads, d] -> out [n, heads, S, d]: each head's RMSNorm (scale NULL: none; r [n, S, heads]), then rotary
   with cos and sin [n, S, d]. */
void headsteer_qk(const float *u, const float *scale, float eps, const float *cos, const float *sin, long n, int S,
                  int heads, int d, float *out, float *r, int threads) {
    int half = d / 2;
#pragma omp parallel for num_threads(threads) if (n * S * heads * d >= PARALLEL_WORK)
    for (long bs = 0; bs < n * S; bs++) {
        long b = bs / S, s = bs % S;
        const float *c = cos + bs * d, *sn = sin + bs * d;
        for (int h = 0; h < heads; h++) {
            const float *src = u + (bs * heads + h) * d;
            float *dst = out + ((b * heads + h) * S + s) * d;
            float normed[d];
            if (scale) {
                float ri = inverse_rms(src, d, eps);
                r[bs * heads + h] = ri;
                for (int j = 0; j < d; j++) normed[j] = src[j] * ri * scale[j];
            } else
                memcpy(normed, src, sizeof(float) * (size_t)d);
            for (int j = 0; j < half; j++) dst[j] = normed[j] * c[j] + -normed[j + half] * sn[j];
            for (int j = half; j < d; j++) dst[j] = normed[j] * c[j] + normed[j - half] * sn[j];
        }
    }
}

/* The gradient for qk's u from g [n, heads, S, d] (qk's out's), into out [n, S, heads, d]. */
void headsteer_qk_grad(const float *g, const float *u, const float *r, const float *scale, const float *cos,
                       const float *sin, long n, int S, int heads, int d, float *out, int threads) {
    int half = d / 2;
#pragma omp parallel for num_threads(threads) if (n * S * heads * d >= PARALLEL_WORK)
    for (long bs = 0; bs < n * S; bs++) {
        long b = bs / S, s = bs % S;
        const float *c = cos + bs * d, *sn = sin + bs * d;
        for (int h = 0; h < heads; h++) {
            const float *gh = g + ((b * heads + h) * S + s) * d;
            float *dst = out + (bs * heads + h) * d;
            float unrotated[d]; /* the gradient for the normed head: g cos + rotate_half^T(g sin) */
            for (int j = 0; j < half; j++) unrotated[j] = gh[j] * c[j] + gh[j + half] * sn[j + half];
            for (int j = half; j < d; j++) unrotated[j] = gh[j] * c[j] + -(gh[j - half] * sn[j - half]);
            if (scale)
                norm_grad_row(u + (bs * heads + h) * d, r[bs * heads + h], scale, unrotated, d, NULL, dst);
            else
                memcpy(dst, unrotated, sizeof(float) * (size_t)d);
        }
    }
}

/* q [n, H, S, d], keys and values [n, H_kv, T, d], mask [n, H, S, T] (or NULL), delta [n, H, d] (or NULL)
   -> p [n, H, S, T], z [n, S, H, d]. */
void headsteer_attention(const float *q, const float *keys, const float *values, const float *mask, float scaling,
                         const float *delta, long n, int H, int H_kv, int S, int T, int d, float *p, float *z,
                         int threads) {
    int group = H / H_kv;
#pragma omp parallel for num_threads(threads) if (n * H * S * T * d >= PARALLEL_WORK)
    for (long bh = 0; bh < n * H; bh++) {
        long b = bh / H, h = bh % H;
        const float *K = keys + (b * H_kv + h / group) * T * d, *V = values + (b * H_kv + h / group) * T * d;
        for (int s = 0; s < S; s++) {
            const float *qs = q + (bh * S + s) * d;
            float *ps = p + (bh * S + s) * T, *zs = z + ((b * S + s) * H + h) * d;
            float top = -INFINITY;
            for (int t = 0; t < T; t++) {
                float score = 0.0f;
#pragma omp simd reduction(+ : score)
                for (int j = 0; j < d; j++) score += qs[j] * K[t * d + j];
                ps[t] = score * scaling + (mask ? mask[(bh * S + s) * T + t] : 0.0f);
                top = ps[t] > top ? ps[t] : top;
            }
            float total = 0.0f;
            for (int t = 0; t < T; t++) total += ps[t] = expf(ps[t] - top);
            for (int t = 0; t < T; t++) ps[t] /= total;
            for (int j = 0; j < d; j++) zs[j] = s == 0 && delta ? delta[bh * d + j] : 0.0f;
            for (int t = 0; t < T; t++)
#pragma omp simd
                for (int j = 0; j < d; j++) zs[j] += ps[t] * V[t * d + j];
        }
    }
}

/* From grad_z [n, S, H, d] (z's gradient) and attention's p: the gradients for q [n, H, S, d], and for the last S
   keys [n, H_kv, S, d] and values [n, S, H_kv, d] (the suffix's own; the cache's are frozen). */
void headsteer_attention_grad(const float *grad_z, const float *p, const float *q, const float *keys,
                              const float *values, float scaling, long n, int H, int H_kv, int S, int T, int d,
                              float *grad_q, float *grad_k, float *grad_v, int threads) {
    int group = H / H_kv;
    memset(grad_k, 0, sizeof(float) * (size_t)(n * H_kv * S * d));
    memset(grad_v, 0, sizeof(float) * (size_t)(n * S * H_kv * d));
    /* Parallel over rows only: the query heads of a row sum into its keys' and values' gradients. */
#pragma omp parallel for num_threads(threads) if (n * H * S * T * d >= PARALLEL_WORK)
    for (long b = 0; b < n; b++) {
        for (int h = 0; h < H; h++) {
            long g = b * H_kv + h / group;
            const float *K = keys + g * T * d, *V = values + g * T * d;
            for (int s = 0; s < S; s++) {
                const float *go = grad_z + ((b * S + s) * H + h) * d, *ps = p + ((b * H + h) * S + s) * T;
                const float *qs = q + ((b * H + h) * S + s) * d;
                float grad_scores[T], weighted = 0.0f;
                for (int t = 0; t < T; t++) { /* the gradient for P, then through the softmax */
                    float dp = 0.0f;
#pragma omp simd reduction(+ : dp)
                    for (int j = 0; j < d; j++) dp += go[j] * V[t * d + j];
                    grad_scores[t] = dp;
                    weighted += dp * ps[t];
                }
                float *gq = grad_q + ((b * H + h) * S + s) * d;
                memset(gq, 0, sizeof(float) * (size_t)d);
                for (int t = 0; t < T; t++) {
                    float gs = ps[t] * (grad_scores[t] - weighted) * scaling;
#pragma omp simd
                    for (int j = 0; j < d; j++) gq[j] += gs * K[t * d + j];
                    if (t < T - S) continue; /* a prefix position: its key and value are the cache's */
                    float *gk = grad_k + (g * S + (t - (T - S))) * d;
                    float *gv = grad_v + ((b * S + (t - (T - S))) * H_kv + h / group) * d;
#pragma omp simd
                    for (int j = 0; j < d; j++) {
                        gk[j] += gs * qs[j];
                        gv[j] += ps[t] * go[j];
                    }
                }
            }
        }
    }
}
