/* Decode matmuls on CPU for weights that are already 4- or 8-bit (GGUF Q4_0/Q4_1, Q8_0), with AVX-512 VNNI.
 *
 * y[r, n] = sum_k x[r, k] * w[n, k] for a few rows r (a decode step), the weights read once for all rows. The
 * activations of each row are quantized per block of 32 to int8 with a float scale (as llama.cpp does), so that a
 * block's dot product is one VPDPBUSD; a block of 4-bit weights is w = d * q + m (q in 0..15), of 8-bit weights
 * w = d * q (q in -128..127, stored biased as q + 128). d and m are fp16, as in the GGUF.
 *
 * Memory order, per pair of blocks A, B (64 elements): the weight bytes are
 *   4-bit: 32 bytes, byte j = q[j] | q[j + 16] << 4 for A (j < 16) then for B, i.e. nibbles [A0..15 | A16..31]
 *          unpack to [A0..15, B0..15] (low) and [A16..31, B16..31] (high);
 *   8-bit: 64 bytes [A0..15, B0..15, A16..31, B16..31];
 * and the quantized activations use the same element order, so that lane i of a VPDPBUSD sums 4 products of one
 * block: lanes 0-3 and 8-11 belong to A, 4-7 and 12-15 to B.
 *
 * Built by models/llm/cpu_native.py with gcc; every entry point is plain C called through ctypes.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "decode_matmul.h"

#define PREFETCH_BYTES 8192 /* weights are streamed once per step: prefetch this far ahead (measured: 6.5 -> 14 GB/s) */

int os_abi_version(void) { return ABI_VERSION; }

/* Scratch for R rows of K activations: int8 values, then per block: scale, exact sum of x, 128 * scale * sum(q). */
size_t os_scratch_bytes(int R, int K) { return (size_t)R * K + (size_t)3 * R * (K / 32) * sizeof(float) + 64; }

acts os_split_scratch(void *scratch, int R, int K) {
    int G = K / 32;
    acts a;
    a.q = (int8_t *)scratch;
    float *f = (float *)(((uintptr_t)scratch + (size_t)R * K + 63) & ~(uintptr_t)63);
    a.dx = f;
    a.sx = f + (size_t)R * G;
    a.cx = f + (size_t)2 * R * G;
    return a;
}

void os_quantize(const void *x, int dtype, int R, int K, acts a) {
    int G = K / 32;
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) {
            size_t at = (size_t)r * K + (size_t)g * 32;
            __m512 lo = load16(x, dtype, at), hi = load16(x, dtype, at + 16);
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
            __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(id)));
            __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(id)));
            int8_t *dst = a.q + (size_t)r * K + (size_t)(g / 2) * 64 + (g % 2) * 16;
            _mm_storeu_si128((__m128i *)dst, _mm512_cvtsepi32_epi8(qlo));
            _mm_storeu_si128((__m128i *)(dst + 32), _mm512_cvtsepi32_epi8(qhi));
            a.dx[r * G + g] = d;
            a.sx[r * G + g] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
            a.cx[r * G + g] = 128.f * d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
        }
}

/* [d_A x4, d_B x4, d_A x4, d_B x4] from two consecutive fp16 values */
static inline __m512 pair_scales_f16(const uint16_t *d) {
    const __m512i pat = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    uint32_t two;
    memcpy(&two, d, 4);
    return _mm512_permutexvar_ps(pat, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)two))));
}

static inline __m512 pair_scales_f32(const float *d) {
    const __m512i pat = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(pat, _mm512_castpd_ps(_mm512_castpd128_pd512(_mm_load_sd((const double *)d))));
}

/* sum over g of f16[g] * f32[g] */
static inline __m512 dot_f16_f32(const uint16_t *a, const float *b, int G) {
    __m512 s = _mm512_setzero_ps();
    for (int g = 0; g < G; g += 16) {
        __mmask16 k = G - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (G - g)) - 1);
        s = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, a + g)), _mm512_maskz_loadu_ps(k, b + g), s);
    }
    return s;
}

static void q4_rows(const uint8_t *qs, const uint16_t *d, const uint16_t *m, int N, int K, acts a, int R, void *y,
                    int ydtype, int n0, int n1) {
    int G = K / 32, P = G / 2;
    const __m256i mask = _mm256_set1_epi8(0x0F);
    for (int n = n0; n < n1; n++) {
        const uint8_t *wq = qs + (size_t)n * (K / 2);
        const uint16_t *wd = d + (size_t)n * G, *wm = m + (size_t)n * G;
        for (int o = 0; o < K / 2; o += 64) _mm_prefetch((const char *)(wq + PREFETCH_BYTES + o), _MM_HINT_T0);
        _mm_prefetch((const char *)(wd + PREFETCH_BYTES / 8), _MM_HINT_T0);
        _mm_prefetch((const char *)(wm + PREFETCH_BYTES / 8), _MM_HINT_T0);
        __m512 acc[8];
        for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
        for (int p = 0; p < P; p++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(wq + p * 32));
            __m256i lo = _mm256_and_si256(w, mask), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), mask);
            __m512i wb = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            __m512 dw = pair_scales_f16(wd + 2 * p);
            for (int r = 0; r < R; r++) {
                __m512i xv = _mm512_loadu_si512((const void *)(a.q + (size_t)r * K + p * 64));
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wb, xv);
                __m512 dx = pair_scales_f32(a.dx + r * G + 2 * p);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), acc[r]);
            }
        }
        for (int r = 0; r < R; r++)
            store1(y, ydtype, (size_t)r * N + n,
                   _mm512_reduce_add_ps(_mm512_add_ps(acc[r], dot_f16_f32(wm, a.sx + r * G, G))));
    }
}

static void q8_rows(const uint8_t *qs, const uint16_t *d, int N, int K, acts a, int R, void *y, int ydtype, int n0,
                    int n1) {
    int G = K / 32, P = G / 2;
    for (int n = n0; n < n1; n++) {
        const uint8_t *wq = qs + (size_t)n * K;
        const uint16_t *wd = d + (size_t)n * G;
        for (int o = 0; o < K; o += 64) _mm_prefetch((const char *)(wq + PREFETCH_BYTES + o), _MM_HINT_T0);
        _mm_prefetch((const char *)(wd + PREFETCH_BYTES / 16), _MM_HINT_T0);
        __m512 acc[8];
        for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
        for (int p = 0; p < P; p++) {
            __m512i wb = _mm512_loadu_si512((const void *)(wq + p * 64));
            __m512 dw = pair_scales_f16(wd + 2 * p);
            for (int r = 0; r < R; r++) {
                __m512i xv = _mm512_loadu_si512((const void *)(a.q + (size_t)r * K + p * 64));
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wb, xv); /* sum (q + 128) * xq */
                __m512 dx = pair_scales_f32(a.dx + r * G + 2 * p);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) /* minus 128 * sum(xq) per block, at that block's scales */
            store1(y, ydtype, (size_t)r * N + n,
                   _mm512_reduce_add_ps(_mm512_sub_ps(acc[r], dot_f16_f32(wd, a.cx + r * G, G))));
    }
}

/* ---- one helper thread: the caller computes the first part of the output rows, the helper the rest ---- */

static void run_job(const job *j) {
    if (j->bits == 4)
        q4_rows(j->qs, j->d, j->m, j->N, j->K, j->a, j->R, j->y, j->ydtype, j->n0, j->n1);
    else
        q8_rows(j->qs, j->d, j->N, j->K, j->a, j->R, j->y, j->ydtype, j->n0, j->n1);
}

/* The posted job is cut into chunks of output rows that the caller and the helper claim one at a time (a CAS on
 * one word holding the job's sequence number and the next chunk), so that a helper which is late — asleep, or
 * preempted by another process on a busy machine — costs the caller nothing: the caller then computes every chunk
 * itself and waits only for a chunk the helper has already started. Between jobs the helper polls, yielding the core
 * to anything else runnable, for spin_ns, then sleeps until the next job wakes it. */
#define CHUNKS 8

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int started;
    job work;                 /* the posted job (stable while its chunks run) */
    int chunk_rows;
    _Atomic uint64_t claim;   /* sequence number << 32 | chunks << 16 | next chunk to claim: one word, so that a
                                 claim always reads the chunk count of the job it claims from */
    atomic_int finished;      /* chunks of the posted job finished */
    atomic_int sleeping;      /* the helper waits on `wake` */
    atomic_int in_step;       /* between os_step_helper(1) and os_step_helper(0): the helper polls, never sleeps */
    long spin_ns;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* Claim and run chunks of the posted job while there are any; returns how many it ran. */
static int claim_chunks(void) {
    int ran = 0;
    for (;;) {
        uint64_t v = atomic_load_explicit(&pool.claim, memory_order_acquire);
        if ((v & 0xFFFF) >= ((v >> 16) & 0xFFFF)) return ran;
        if (!atomic_compare_exchange_weak_explicit(&pool.claim, &v, v + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int c = (int)(v & 0xFFFF);
        job part = pool.work;
        part.n0 = pool.work.n0 + c * pool.chunk_rows;
        part.n1 = part.n0 + pool.chunk_rows < pool.work.n1 ? part.n0 + pool.chunk_rows : pool.work.n1;
        run_job(&part);
        atomic_fetch_add_explicit(&pool.finished, 1, memory_order_acq_rel);
        ran++;
    }
}

static int claimable(void) {
    uint64_t v = atomic_load(&pool.claim);
    return (v & 0xFFFF) < ((v >> 16) & 0xFFFF);
}

static void *helper_main(void *arg) {
    (void)arg;
    long idle_since = now_ns();
    for (;;) {
        if (claim_chunks()) {
            idle_since = now_ns();
            continue;
        }
        if (atomic_load_explicit(&pool.in_step, memory_order_relaxed) || now_ns() - idle_since < pool.spin_ns) {
            sched_yield();
            continue;
        }
        pthread_mutex_lock(&pool.lock);
        atomic_store(&pool.sleeping, 1); /* seq_cst: pairs with the caller's store of claim, then load of sleeping */
        while (!claimable() && !atomic_load(&pool.in_step)) pthread_cond_wait(&pool.wake, &pool.lock);
        atomic_store(&pool.sleeping, 0);
        pthread_mutex_unlock(&pool.lock);
        idle_since = now_ns();
    }
    return NULL;
}

/* Start the helper thread (once); spin_us: how long it polls for the next job before it sleeps. */
int os_set_helper(int spin_us) {
    pool.spin_ns = (long)spin_us * 1000L;
    if (pool.started) return 0;
    pthread_t thread;
    if (pthread_create(&thread, NULL, helper_main, NULL) != 0) return -1;
    pthread_detach(thread);
    pool.started = 1;
    return 0;
}

static size_t helper_min_bytes = 0, step_min_bytes = 0;
void os_set_helper_min_bytes(size_t bytes) { helper_min_bytes = bytes; }

/* Inside a whole decode step (decode_step.c), calls reading at least `bytes` of weights are split (0: the same as
 * outside a step), the helper polling from the step's start to its end rather than sleeping between calls: one
 * wake-up per step instead of one per call, and the second core is given back as soon as the step ends. */
void os_set_step_helper_min_bytes(size_t bytes) { step_min_bytes = bytes; }

static void wake_helper(void) {
    if (atomic_load(&pool.sleeping)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_signal(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
}

void os_step_helper(int on) {
    if (!pool.started || step_min_bytes == 0) return;
    atomic_store(&pool.in_step, on ? 1 : 0); /* seq_cst: pairs with the helper's store of sleeping, then load */
    if (on) wake_helper();
}

void os_dispatch(job j, size_t weight_bytes) {
    int rows = j.n1 - j.n0;
    size_t min_bytes = atomic_load_explicit(&pool.in_step, memory_order_relaxed) ? step_min_bytes : helper_min_bytes;
    if (!pool.started || min_bytes == 0 || weight_bytes < min_bytes || rows < 2 * 16) {
        run_job(&j);
        return;
    }
    int chunks = rows / 16 < CHUNKS ? rows / 16 : CHUNKS;
    pool.work = j;
    pool.chunk_rows = (rows + chunks - 1) / chunks;
    atomic_store_explicit(&pool.finished, 0, memory_order_relaxed);
    uint64_t seq = ((atomic_load_explicit(&pool.claim, memory_order_relaxed) >> 32) + 1) & 0xFFFFFFFFu;
    atomic_store(&pool.claim, seq << 32 | (uint64_t)chunks << 16); /* publishes the job (seq_cst) */
    wake_helper();
    claim_chunks();
    while (atomic_load_explicit(&pool.finished, memory_order_acquire) < chunks) _mm_pause();
}

/* x [R, K] (F32 or BF16), y [R, N] (F32 or BF16); R <= 8; K a multiple of 64; scratch os_scratch_bytes(R, K). */
void os_q4_matmul(const uint8_t *qs, const uint16_t *d, const uint16_t *m, int N, int K, const void *x, int xdtype,
                  int R, void *y, int ydtype, void *scratch) {
    acts a = os_split_scratch(scratch, R, K);
    os_quantize(x, xdtype, R, K, a);
    job j = {4, qs, d, m, N, K, R, ydtype, 0, N, a, y};
    os_dispatch(j, (size_t)N * K / 2);
}

void os_q8_matmul(const uint8_t *qs, const uint16_t *d, int N, int K, const void *x, int xdtype, int R, void *y,
                  int ydtype, void *scratch) {
    acts a = os_split_scratch(scratch, R, K);
    os_quantize(x, xdtype, R, K, a);
    job j = {8, qs, d, NULL, N, K, R, ydtype, 0, N, a, y};
    os_dispatch(j, (size_t)N * K);
}
