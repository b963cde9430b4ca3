/* A whole decode step of a Llama-family model in one call: every layer's RMSNorm, fused q/k/v matmul, rotary, KV
 * cache write, decode attention, o_proj, residual, RMSNorm, fused gate/up matmul, SiLU * up, down_proj, residual,
 * then the final norm and the LM head, for R <= 8 decode tokens. The matmuls are decode_matmul.c's (4/8-bit GGUF
 * blocks); everything between them runs here in float32, so a step costs one call from Python instead of ~120
 * kernel calls and ~35 small PyTorch ops per layer.
 *
 * Shapes (E hidden, Hq/Hkv heads, D head dim, I intermediate, V vocabulary, S slots, T slot length):
 *   h [R, E] float32 (the embedded tokens; updated in place), cos/sin [R, D] float32 (rotary, halves repeated as in
 *   transformers), slots/positions [R] int64, logits [R, V] float32; per layer K and V caches [S, Hkv, T, D] (F32 or
 *   BF16), q/k/v weight rows [Hq*D | Hkv*D | Hkv*D], gate/up weight rows [I | I].
 * Built by models/llm/cpu_native.py together with decode_matmul.c; called through ctypes from native_step.py.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "decode_matmul.h"

#define MAX_D 256  /* head dims up to this (a multiple of 16) */
#define MAX_GROUP 16 /* query heads per kv head */

typedef struct {
    const uint8_t *qs;
    const uint16_t *d, *m; /* m: NULL for 8-bit */
    int bits, N, K;
} weight_t;

typedef struct {
    const void *input_norm, *post_norm; /* [E], dtype norm_dtype */
    weight_t qkv, o, gate_up, down;
    void *k_cache, *v_cache; /* [S, Hkv, T, D], dtype cache_dtype */
    int window;              /* sliding window in tokens, 0: none */
} layer_t;

typedef struct {
    int num_layers, E, Hq, Hkv, D, I, V, S, T, norm_dtype, cache_dtype;
    float eps, scaling;
    const layer_t *layers;
    const void *final_norm;
    weight_t head;
} model_t;

static inline float load1(const void *x, int dtype, size_t i) {
    if (dtype == BF16) {
        uint32_t u = (uint32_t)((const uint16_t *)x)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return ((const float *)x)[i];
}

/* Scratch layout (floats): x [R, E'], qkv [R, (Hq + 2 Hkv) D], attn [R, Hq D], gu [R, 2I], act [R, I],
 * scores [MAX_GROUP, T], then the matmuls' quantized activations for K up to max(E, Hq D, I). */
static size_t widest(const model_t *m) {
    size_t k = (size_t)m->E;
    if ((size_t)m->Hq * m->D > k) k = (size_t)m->Hq * m->D;
    if ((size_t)m->I > k) k = (size_t)m->I;
    return k;
}

size_t os_step_scratch_bytes(const model_t *m, int R) {
    size_t qkv = (size_t)(m->Hq + 2 * m->Hkv) * m->D;
    size_t floats = (size_t)R * (widest(m) + qkv + (size_t)m->Hq * m->D + 3 * (size_t)m->I) +
                    (size_t)MAX_GROUP * m->T + 64;
    return floats * sizeof(float) + os_scratch_bytes(R, (int)widest(m)) + 128;
}

/* y [R, N] = x [R, K] (float32) @ w.T */
static void matmul(const weight_t *w, const float *x, int R, float *y, void *qscratch) {
    acts a = os_split_scratch(qscratch, R, w->K);
    os_quantize(x, F32, R, w->K, a);
    job j = {w->bits, w->qs, w->d, w->m, w->N, w->K, R, F32, 0, w->N, a, y};
    size_t bytes = w->bits == 4 ? (size_t)w->N * w->K / 2 : (size_t)w->N * w->K;
    os_dispatch(j, bytes);
}

/* transformers' RMSNorm: y = weight * (x / sqrt(mean(x^2) + eps)) (here without the cast to the model's dtype) */
static void rms_norm(const float *x, const void *weight, int dtype, int E, float eps, int R, float *y) {
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * E;
        float *yr = y + (size_t)r * E;
        float ss = 0.f;
        for (int i = 0; i < E; i++) ss += xr[i] * xr[i];
        float scale = 1.f / sqrtf(ss / (float)E + eps);
        for (int i = 0; i < E; i++) yr[i] = load1(weight, dtype, i) * (xr[i] * scale);
    }
}

/* x [H, D] rotated in place: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] */
static void rotate(float *x, int H, int D, const float *cos, const float *sin) {
    int half = D / 2;
    for (int h = 0; h < H; h++) {
        float *v = x + (size_t)h * D;
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/* out [G, D] = softmax(scaling * q k^T) v over keys [start, end) of one kv head: q [G, D] (query heads sharing that
 * kv head), keys/values [T, D] of that head; scores: scratch [G, T]. */
static void attend(const float *q, int G, int D, const void *keys, const void *values, int dtype, int start, int end,
                   float scaling, float *scores, int T, float *out) {
    int chunks = D / 16;
    __m512 qv[MAX_GROUP][MAX_D / 16];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < chunks; c++) qv[g][c] = _mm512_loadu_ps(q + (size_t)g * D + c * 16);
    float best[MAX_GROUP];
    for (int g = 0; g < G; g++) best[g] = -INFINITY;
    for (int j = start; j < end; j++) {
        __m512 kv[MAX_D / 16];
        for (int c = 0; c < chunks; c++) kv[c] = load16(keys, dtype, (size_t)j * D + c * 16);
        for (int g = 0; g < G; g++) {
            __m512 s = _mm512_mul_ps(qv[g][0], kv[0]);
            for (int c = 1; c < chunks; c++) s = _mm512_fmadd_ps(qv[g][c], kv[c], s);
            float score = _mm512_reduce_add_ps(s) * scaling;
            scores[(size_t)g * T + j] = score;
            if (score > best[g]) best[g] = score;
        }
    }
    float total[MAX_GROUP];
    for (int g = 0; g < G; g++) {
        float sum = 0.f, *sg = scores + (size_t)g * T;
        for (int j = start; j < end; j++) {
            sg[j] = expf(sg[j] - best[g]);
            sum += sg[j];
        }
        total[g] = sum;
    }
    __m512 acc[MAX_GROUP][MAX_D / 16];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < chunks; c++) acc[g][c] = _mm512_setzero_ps();
    for (int j = start; j < end; j++) {
        __m512 vv[MAX_D / 16];
        for (int c = 0; c < chunks; c++) vv[c] = load16(values, dtype, (size_t)j * D + c * 16);
        for (int g = 0; g < G; g++) {
            __m512 p = _mm512_set1_ps(scores[(size_t)g * T + j]);
            for (int c = 0; c < chunks; c++) acc[g][c] = _mm512_fmadd_ps(p, vv[c], acc[g][c]);
        }
    }
    for (int g = 0; g < G; g++) {
        __m512 inv = _mm512_set1_ps(1.f / total[g]);
        for (int c = 0; c < chunks; c++) _mm512_storeu_ps(out + (size_t)g * D + c * 16, _mm512_mul_ps(acc[g][c], inv));
    }
}

/* 0 when the geometry is one this file computes, else a negative code (checked once, at build time in Python). */
int os_step_check(const model_t *m) {
    if (m->D % 16 || m->D > MAX_D || m->D % 2) return -1;
    if (m->Hkv < 1 || m->Hq % m->Hkv || m->Hq / m->Hkv > MAX_GROUP) return -2;
    if (m->E % 64 || (m->Hq * m->D) % 64 || m->I % 64) return -3;
    for (int l = 0; l < m->num_layers; l++) {
        const layer_t *L = &m->layers[l];
        if (L->qkv.N != (m->Hq + 2 * m->Hkv) * m->D || L->qkv.K != m->E) return -4;
        if (L->o.N != m->E || L->o.K != m->Hq * m->D) return -5;
        if (L->gate_up.N != 2 * m->I || L->gate_up.K != m->E) return -6;
        if (L->down.N != m->E || L->down.K != m->I) return -7;
    }
    if (m->head.N != m->V || m->head.K != m->E) return -8;
    return 0;
}

/* 0 when done; -1 (nothing computed or written) when a row's slot or position is outside the cache. */
int os_decode_step(const model_t *m, int R, float *h, const float *cos, const float *sin, const int64_t *slots,
                   const int64_t *positions, float *logits, void *scratch) {
    for (int r = 0; r < R; r++)
        if (slots[r] < 0 || slots[r] >= m->S || positions[r] < 0 || positions[r] >= m->T) return -1;
    int E = m->E, D = m->D, Hq = m->Hq, Hkv = m->Hkv, I = m->I, T = m->T, G = Hq / Hkv;
    size_t qkv_n = (size_t)(Hq + 2 * Hkv) * D;
    float *x = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *qkv = x + (size_t)R * widest(m);
    float *attn = qkv + (size_t)R * qkv_n;
    float *gu = attn + (size_t)R * Hq * D;
    float *act = gu + (size_t)R * 2 * I;
    float *scores = act + (size_t)R * I;
    void *qscratch = (void *)(((uintptr_t)(scores + (size_t)MAX_GROUP * T) + 63) & ~(uintptr_t)63);
    size_t head_stride = (size_t)T * D, slot_stride = (size_t)Hkv * T * D;
    os_step_helper(1);
    for (int l = 0; l < m->num_layers; l++) {
        const layer_t *L = &m->layers[l];
        rms_norm(h, L->input_norm, m->norm_dtype, E, m->eps, R, x);
        matmul(&L->qkv, x, R, qkv, qscratch); /* [R, (Hq + 2 Hkv) D] */
        for (int r = 0; r < R; r++) {
            float *q = qkv + (size_t)r * qkv_n, *k = q + (size_t)Hq * D, *v = k + (size_t)Hkv * D;
            rotate(q, Hq, D, cos + (size_t)r * D, sin + (size_t)r * D);
            rotate(k, Hkv, D, cos + (size_t)r * D, sin + (size_t)r * D);
            int64_t pos = positions[r];
            size_t base = (size_t)slots[r] * slot_stride + (size_t)pos * D;
            for (int kh = 0; kh < Hkv; kh++)
                for (int i = 0; i < D; i++) {
                    store1(L->k_cache, m->cache_dtype, base + kh * head_stride + i, k[(size_t)kh * D + i]);
                    store1(L->v_cache, m->cache_dtype, base + kh * head_stride + i, v[(size_t)kh * D + i]);
                }
            int end = (int)pos + 1, start = L->window > 0 && end > L->window ? end - L->window : 0;
            for (int kh = 0; kh < Hkv; kh++) {
                size_t at = (size_t)slots[r] * slot_stride + kh * head_stride;
                size_t esize = m->cache_dtype == BF16 ? 2 : 4;
                attend(q + (size_t)kh * G * D, G, D, (const char *)L->k_cache + at * esize,
                       (const char *)L->v_cache + at * esize, m->cache_dtype, start, end, m->scaling, scores, T,
                       attn + (size_t)r * Hq * D + (size_t)kh * G * D);
            }
        }
        matmul(&L->o, attn, R, x, qscratch); /* [R, E] */
        for (size_t i = 0; i < (size_t)R * E; i++) h[i] += x[i];
        rms_norm(h, L->post_norm, m->norm_dtype, E, m->eps, R, x);
        matmul(&L->gate_up, x, R, gu, qscratch); /* [R, 2I]: gate | up */
        for (int r = 0; r < R; r++)
            for (int i = 0; i < I; i++) {
                float g = gu[(size_t)r * 2 * I + i], u = gu[(size_t)r * 2 * I + I + i];
                act[(size_t)r * I + i] = g / (1.f + expf(-g)) * u;
            }
        matmul(&L->down, act, R, x, qscratch); /* [R, E] */
        for (size_t i = 0; i < (size_t)R * E; i++) h[i] += x[i];
    }
    rms_norm(h, m->final_norm, m->norm_dtype, E, m->eps, R, x);
    matmul(&m->head, x, R, logits, qscratch); /* [R, V] */
    os_step_helper(0);
    return 0;
}
