/* A decoder layer's whole suffix step, forward and backward, as one call each way.
 *
 * headsteer/fitting/fused_block.py writes a block's step out as a dozen stages each way: its four linear layers
 * (linear.c) and the operations between them (block.c). Called from Python, each stage costs a few microseconds
 * of dispatch and allocation beside its arithmetic, about a third of a fit step on Gemma 3 270M with the bf16
 * option. Here the same stages run in the same order from C, on buffers carved from one workspace: the forward
 * keeps in it what the backward reads. Line by line this is FusedBlock.forward and FusedBlock.backward (their
 * docstrings give the equations), with three differences that change no value:
 *
 *   - the keys and values are the cache's prefix followed by the suffix's own, copied into the workspace: the
 *     cache is not updated (the caller drops what a step adds to it anyway);
 *   - the MLP's gate activation and its gradient are computed here (act_forward, act_backward);
 *   - a group of linear layers reading one input (q, k, v; gate, up) runs as one product where its weights are
 *     stacked in one copy (the bf16 option), else layer by layer, its input gradients summed.
 *
 * headsteer/fitting/native_step.py builds the hs_block description once per block and checks what a call needs.
 */
#include <math.h>
#include <string.h>

#include "tiles.h"

/* The stages (linear.c, block.c). */
void headsteer_linear(const float *x, const void *W, const float *bias, float *y, int M, int K, long N, int shares,
                      int bf16, float *split);
void headsteer_linear_input_grad(const float *g, const void *W, float *dx, int M, long N, int K, int shares,
                                 float *scratch, int bf16);
void headsteer_rms_norm(const float *u, const float *scale, float eps, long rows, int dim, const float *add, float *out,
                        float *r, int threads);
void headsteer_rms_norm_grad(const float *u, const float *r, const float *scale, const float *g, long rows, int dim,
                             const float *add, float *out, int threads);
void headsteer_qk(const float *u, const float *scale, float eps, const float *cos, const float *sin, long n, int S,
                  int heads, int d, float *out, float *r, int threads);
void headsteer_qk_grad(const float *g, const float *u, const float *r, const float *scale, const float *cos,
                       const float *sin, long n, int S, int heads, int d, float *out, int threads);
void headsteer_attention(const float *q, const float *keys, const float *values, const float *mask, float scaling,
                         const float *delta, long n, int H, int H_kv, int S, int T, int d, float *p, float *z,
                         int threads);
void headsteer_attention_grad(const float *grad_z, const float *p, const float *q, const float *keys,
                              const float *values, float scaling, long n, int H, int H_kv, int S, int T, int d,
                              float *grad_q, float *grad_k, float *grad_v, int threads);

/* Linear layers reading one input: `outputs` outputs of widths out[i], from one stacked weight (parts = 1) or one
   weight each (parts = outputs). Part j: weight [rows[j], in] (fp32, or bf16 where bf16[j]), bias [rows[j]] or NULL. */
typedef struct {
    const void *weight[3];
    const float *bias[3];
    long rows[3];
    int bf16[3];
    int parts, outputs;
    long out[3];
} hs_group;

enum { NORM_IN, NORM_Q, NORM_K, NORM_PA, NORM_PF, NORM_PFF }; /* a block's RMSNorms, as FusedBlock names them */
enum { ACT_GELU_TANH, ACT_SILU };

typedef struct {
    int D, H, Hkv, d, F, act; /* model width, heads, key/value heads, head width, MLP width, gate activation */
    float scaling;            /* of the attention scores */
    hs_group qkv, o, gate_up, down;
    const float *scale[6]; /* each norm's scale (offset + w); NULL: the block has no such norm (q, k, pa, pff) */
    float eps[6];
} hs_block;

/* Two buffers of floats: the workspace, what the forward keeps for the backward; and scratch, which each call uses
   only while it runs: `wide` (a group's stacked output or gradient), BUFFERS buffers of [M, width] (width: the widest
   input of a linear layer), the rows split for a bf16 product, the other threads' partial input gradients. */
#define BUFFERS 5
typedef struct {
    long r_in, q, k, v, r_q, r_k, q_rot, keys, values, p, attn, r_pa, h, r_pf, gate, up, act, mlp, r_pff, kept;
    long wide, buffer, split, partial, scratch, width;
} layout;

static long max3(long a, long b, long c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

static layout plan(const hs_block *B, long n, int S, int T, int threads) {
    long M = n * S, Q = (long)B->H * B->d, KV = (long)B->Hkv * B->d;
    layout L;
    L.width = max3(Q, B->F, B->D);
    long at = 0;
#define TAKE(field, count) (L.field = at, at += (count))
    TAKE(r_in, M);
    TAKE(q, M * Q);
    TAKE(k, M * KV);
    TAKE(v, M * KV);
    TAKE(r_q, M * B->H);
    TAKE(r_k, M * B->Hkv);
    TAKE(q_rot, M * Q);
    TAKE(keys, n * KV * T);
    TAKE(values, n * KV * T);
    TAKE(p, n * B->H * (long)S * T);
    TAKE(attn, M * B->D);
    TAKE(r_pa, M);
    TAKE(h, M * B->D);
    TAKE(r_pf, M);
    TAKE(gate, M * B->F);
    TAKE(up, M * B->F);
    TAKE(act, M * B->F);
    TAKE(mlp, M * B->D);
    TAKE(r_pff, M);
    L.kept = at;
    at = 0;
    TAKE(wide, M * max3(Q + 2 * KV, 2L * B->F, B->D));
    TAKE(buffer, BUFFERS * M * L.width);
    TAKE(split, M * round32(L.width));
    TAKE(partial, (threads > 1 ? threads - 1 : 1) * M * L.width);
#undef TAKE
    L.scratch = at;
    return L;
}

/* sizes[0]: the workspace's floats, sizes[1]: the scratch's, for n rows of S suffix positions, T positions in all. */
void headsteer_block_sizes(const hs_block *B, long n, int S, int T, int threads, long *sizes) {
    layout L = plan(B, n, S, T, threads);
    sizes[0] = L.kept;
    sizes[1] = L.scratch;
}

/* outs[i] [M, out[i]] = x [M, K] W_i^T + b_i; tmp: [M, sum out] for a stacked group. */
static void group_forward(const hs_group *g, const float *x, int M, int K, float **outs, float *tmp, float *split,
                          int threads) {
    if (g->parts == g->outputs) {
        for (int j = 0; j < g->parts; j++)
            headsteer_linear(x, g->weight[j], g->bias[j], outs[j], M, K, g->rows[j], threads, g->bf16[j], split);
        return;
    }
    headsteer_linear(x, g->weight[0], g->bias[0], tmp, M, K, g->rows[0], threads, g->bf16[0], split);
    for (int a = 0; a < M; a++) /* each output's columns of the stacked product */
        for (long at = 0, i = 0; i < g->outputs; at += g->out[i], i++)
            memcpy(outs[i] + a * g->out[i], tmp + a * g->rows[0] + at, sizeof(float) * (size_t)g->out[i]);
}

/* dx [M, K] = sum_i grads[i] [M, out[i]] W_i; tmp: [M, sum out] (stacked) or [M, K] (layer by layer). */
static void group_input_grad(const hs_group *g, const float **grads, int M, int K, float *dx, float *tmp,
                             float *partial, int threads) {
    if (g->parts == g->outputs) {
        for (int j = 0; j < g->parts; j++) {
            float *into = j == 0 ? dx : tmp;
            headsteer_linear_input_grad(grads[j], g->weight[j], into, M, g->rows[j], K, threads, partial, g->bf16[j]);
            if (j > 0)
                for (long i = 0; i < (long)M * K; i++) dx[i] += tmp[i];
        }
        return;
    }
    for (int a = 0; a < M; a++) /* the gradients side by side, as the stacked weight's rows are */
        for (long at = 0, i = 0; i < g->outputs; at += g->out[i], i++)
            memcpy(tmp + a * g->rows[0] + at, grads[i] + a * g->out[i], sizeof(float) * (size_t)g->out[i]);
    headsteer_linear_input_grad(tmp, g->weight[0], dx, M, g->rows[0], K, threads, partial, g->bf16[0]);
}

/* e^x for 16 lanes: x = k ln 2 + r, |r| <= ln 2 / 2, e^r by its Taylor polynomial to r^7 (relative error below
   1e-8, under fp32's rounding), times 2^k. x is clamped to [-104, 89] first: e^x underflows to 0 or overflows to
   infinity past them, as expf does. */
INLINE AVX512 __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x); /* ln 2 in two parts: k ln2_hi is exact */
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    const float c[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
    __m512 e = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 8; i++) e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(e, k);
}

/* The gate's sigmoid factor: GELU(u) = 0.5 u (1 + tanh(a)) = u sigmoid(2a), a = sqrt(2/pi) (u + 0.044715 u^3)
   (tanh-approximated); SiLU(u) = u sigmoid(u). Into s the sigmoid, into da the derivative of its argument. */
INLINE AVX512 void sigmoid_factor(__m512 u, int act, __m512 *s, __m512 *da) {
    __m512 arg, one = _mm512_set1_ps(1.0f);
    if (act == ACT_GELU_TANH) {
        const __m512 beta = _mm512_set1_ps(2.0f * 0.7978845608028654f), kappa = _mm512_set1_ps(0.044715f);
        __m512 u2 = _mm512_mul_ps(u, u);
        arg = _mm512_mul_ps(beta, _mm512_fmadd_ps(_mm512_mul_ps(kappa, u2), u, u));
        *da = _mm512_mul_ps(beta, _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(3.0f), kappa), u2, one));
    } else {
        arg = u;
        *da = one;
    }
    *s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), arg))));
}

/* act = act(gate), product = act * up (count elements). */
static AVX512 void act_forward(const float *gate, const float *up, long count, int act_kind, float *act,
                               float *product) {
    for (long i = 0; i < count; i += 16) {
        __mmask16 m = lanes(count - i);
        __m512 u = _mm512_maskz_loadu_ps(m, gate + i), s, da;
        sigmoid_factor(u, act_kind, &s, &da);
        __m512 a = _mm512_mul_ps(u, s);
        _mm512_mask_storeu_ps(act + i, m, a);
        _mm512_mask_storeu_ps(product + i, m, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

/* From g = dL/d(act * up): dL/d gate = g up act'(gate), dL/d up = g act; act'(u) = s + u s (1 - s) da. */
static AVX512 void act_backward(const float *g, const float *gate, const float *up, const float *act, long count,
                                int act_kind, float *grad_gate, float *grad_up) {
    for (long i = 0; i < count; i += 16) {
        __mmask16 m = lanes(count - i);
        __m512 u = _mm512_maskz_loadu_ps(m, gate + i), gi = _mm512_maskz_loadu_ps(m, g + i), s, da;
        sigmoid_factor(u, act_kind, &s, &da);
        __m512 s_ds = _mm512_mul_ps(s, _mm512_sub_ps(_mm512_set1_ps(1.0f), s)); /* the sigmoid's own derivative */
        __m512 slope = _mm512_fmadd_ps(_mm512_mul_ps(u, s_ds), da, s);
        __m512 g_up = _mm512_mul_ps(gi, _mm512_maskz_loadu_ps(m, up + i));
        _mm512_mask_storeu_ps(grad_gate + i, m, _mm512_mul_ps(g_up, slope));
        _mm512_mask_storeu_ps(grad_up + i, m, _mm512_mul_ps(gi, _mm512_maskz_loadu_ps(m, act + i)));
    }
}

/* dst [n, heads, T0 + S, d] = the prefix's [n, heads, T0, d] then the suffix's [n, heads, S, d]. */
static void concat_positions(const float *prefix, const float *suffix, long n, int heads, int T0, int S, int d,
                             float *dst) {
    for (long bh = 0; bh < n * heads; bh++) {
        memcpy(dst + bh * (T0 + S) * d, prefix + bh * T0 * d, sizeof(float) * (size_t)T0 * d);
        memcpy(dst + (bh * (T0 + S) + T0) * d, suffix + bh * S * d, sizeof(float) * (size_t)S * d);
    }
}

/* A norm where the block has one (out = add + N(u), r kept), else out = add + u. */
static void norm_or_add(const hs_block *B, int which, const float *u, const float *add, long M, float *out, float *r,
                        int threads) {
    if (B->scale[which]) {
        headsteer_rms_norm(u, B->scale[which], B->eps[which], M, B->D, add, out, r, threads);
        return;
    }
    for (long i = 0; i < M * B->D; i++) out[i] = add[i] + u[i];
}

/* The gradient for u through norm_or_add (the norm's, or g itself), plus add (or NULL). */
static void norm_or_add_grad(const hs_block *B, int which, const float *u, const float *r, const float *g,
                             const float *add, long M, float *out, int threads) {
    if (B->scale[which]) {
        headsteer_rms_norm_grad(u, r, B->scale[which], g, M, B->D, add, out, threads);
        return;
    }
    for (long i = 0; i < M * B->D; i++) out[i] = (add ? add[i] : 0.0f) + g[i];
}

/* y [n, S, D] = block(x [n, S, D]; delta [n, H, d] or NULL), against the prefix's keys and values [n, Hkv, T0, d];
   cos, sin [n, S, d]; mask [n, H, S, T0 + S] or NULL. ws, scratch: as headsteer_block_sizes gives them; ws kept for
   the backward. */
void headsteer_block_forward(const hs_block *B, const float *x, const float *delta, const float *cos, const float *sin,
                             const float *mask, const float *prefix_keys, const float *prefix_values, long n, int S,
                             int T0, float *y, float *ws, float *scratch, int threads) {
    int T = T0 + S, D = B->D, H = B->H, Hkv = B->Hkv, d = B->d, F = B->F;
    long M = n * S;
    layout L = plan(B, n, S, T, threads);
    float *wide = scratch + L.wide, *split = scratch + L.split, *buffer[BUFFERS];
    for (int i = 0; i < BUFFERS; i++) buffer[i] = scratch + L.buffer + i * M * L.width;
    float *a = buffer[0], *z = buffer[1], *product = buffer[2]; /* a: N_in(x), later b = N_pf(h) */
    headsteer_rms_norm(x, B->scale[NORM_IN], B->eps[NORM_IN], M, D, NULL, a, ws + L.r_in, threads);
    group_forward(&B->qkv, a, (int)M, D, (float *[]){ws + L.q, ws + L.k, ws + L.v}, wide, split, threads);
    headsteer_qk(ws + L.q, B->scale[NORM_Q], B->eps[NORM_Q], cos, sin, n, S, H, d, ws + L.q_rot, ws + L.r_q, threads);
    float *suffix = wide; /* the suffix's keys after their norm and rotary, [n, Hkv, S, d]; then its values */
    headsteer_qk(ws + L.k, B->scale[NORM_K], B->eps[NORM_K], cos, sin, n, S, Hkv, d, suffix, ws + L.r_k, threads);
    concat_positions(prefix_keys, suffix, n, Hkv, T0, S, d, ws + L.keys);
    for (long b = 0; b < n; b++) /* v [n, S, Hkv, d] heads first, as the cache keeps values */
        for (int s = 0; s < S; s++)
            for (int g = 0; g < Hkv; g++)
                memcpy(suffix + ((b * Hkv + g) * S + s) * d, ws + L.v + ((b * S + s) * Hkv + g) * d,
                       sizeof(float) * (size_t)d);
    concat_positions(prefix_values, suffix, n, Hkv, T0, S, d, ws + L.values);
    headsteer_attention(ws + L.q_rot, ws + L.keys, ws + L.values, mask, B->scaling, delta, n, H, Hkv, S, T, d,
                        ws + L.p, z, threads);
    group_forward(&B->o, z, (int)M, H * d, (float *[]){ws + L.attn}, wide, split, threads);
    norm_or_add(B, NORM_PA, ws + L.attn, x, M, ws + L.h, ws + L.r_pa, threads);
    headsteer_rms_norm(ws + L.h, B->scale[NORM_PF], B->eps[NORM_PF], M, D, NULL, a, ws + L.r_pf, threads);
    group_forward(&B->gate_up, a, (int)M, D, (float *[]){ws + L.gate, ws + L.up}, wide, split, threads);
    act_forward(ws + L.gate, ws + L.up, M * F, B->act, ws + L.act, product);
    group_forward(&B->down, product, (int)M, F, (float *[]){ws + L.mlp}, wide, split, threads);
    norm_or_add(B, NORM_PFF, ws + L.mlp, ws + L.h, M, y, ws + L.r_pff, threads);
}

/* dL/dx [n, S, D] and dL/d delta [n, H, d] from dL/dy, with the forward's workspace (x, cos, sin as given to it). */
void headsteer_block_backward(const hs_block *B, const float *grad_y, const float *x, const float *cos,
                              const float *sin, long n, int S, int T0, const float *ws, float *scratch, float *grad_x,
                              float *grad_delta, int threads) {
    int T = T0 + S, D = B->D, H = B->H, Hkv = B->Hkv, d = B->d, F = B->F;
    long M = n * S, Q = (long)H * d;
    layout L = plan(B, n, S, T, threads);
    float *wide = scratch + L.wide, *partial = scratch + L.partial, *buffer[BUFFERS];
    for (int i = 0; i < BUFFERS; i++) buffer[i] = scratch + L.buffer + i * M * L.width;
    float *grad_mlp = buffer[0], *grad_product = buffer[1], *grad_b = buffer[0], *grad_h = buffer[4];
    /* y = h + N_pff(mlp) */
    norm_or_add_grad(B, NORM_PFF, ws + L.mlp, ws + L.r_pff, grad_y, NULL, M, grad_mlp, threads);
    group_input_grad(&B->down, (const float *[]){grad_mlp}, (int)M, F, grad_product, wide, partial, threads);
    float *grad_gate = buffer[2], *grad_up = buffer[3];
    act_backward(grad_product, ws + L.gate, ws + L.up, ws + L.act, M * F, B->act, grad_gate, grad_up);
    group_input_grad(&B->gate_up, (const float *[]){grad_gate, grad_up}, (int)M, D, grad_b, wide, partial, threads);
    /* b = N_pf(h), and h reaches y directly */
    norm_or_add_grad(B, NORM_PF, ws + L.h, ws + L.r_pf, grad_b, grad_y, M, grad_h, threads);
    /* h = x + N_pa(z W_o^T) */
    float *grad_attn = buffer[0], *grad_z = buffer[1];
    norm_or_add_grad(B, NORM_PA, ws + L.attn, ws + L.r_pa, grad_h, NULL, M, grad_attn, threads);
    group_input_grad(&B->o, (const float *[]){grad_attn}, (int)M, (int)Q, grad_z, wide, partial, threads);
    for (long b = 0; b < n; b++) /* dL/d delta: dL/dz at suffix position 0 */
        memcpy(grad_delta + b * Q, grad_z + b * S * Q, sizeof(float) * (size_t)Q);
    /* attention, then each head's norm and rotary; the cache's keys and values are frozen */
    float *grad_q_rot = wide, *grad_k_rot = wide + M * Q, *grad_v = buffer[2];
    headsteer_attention_grad(grad_z, ws + L.p, ws + L.q_rot, ws + L.keys, ws + L.values, B->scaling, n, H, Hkv, S, T, d,
                             grad_q_rot, grad_k_rot, grad_v, threads);
    float *grad_q = buffer[0], *grad_k = buffer[1], *grad_a = buffer[3];
    headsteer_qk_grad(grad_q_rot, ws + L.q, ws + L.r_q, B->scale[NORM_Q], cos, sin, n, S, H, d, grad_q, threads);
    headsteer_qk_grad(grad_k_rot, ws + L.k, ws + L.r_k, B->scale[NORM_K], cos, sin, n, S, Hkv, d, grad_k, threads);
    group_input_grad(&B->qkv, (const float *[]){grad_q, grad_k, grad_v}, (int)M, D, grad_a, wide, partial, threads);
    /* a = N_in(x), and x reaches h directly */
    headsteer_rms_norm_grad(x, ws + L.r_in, B->scale[NORM_IN], grad_a, M, D, grad_h, grad_x, threads);
}
