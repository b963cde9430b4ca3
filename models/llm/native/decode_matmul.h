/* Shared by decode_matmul.c and decode_step.c: dtype codes and conversions, activation quantization, and the
 * (helper-split) matmul job. */
#ifndef OPENSERVE_DECODE_MATMUL_H
#define OPENSERVE_DECODE_MATMUL_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ABI_VERSION 2

enum { F32 = 0, BF16 = 1 };

/* 16 consecutive values of x (F32 or BF16) as float32 */
static inline __m512 load16(const void *x, int dtype, size_t i) {
    if (dtype == BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)x + i);
}

/* y[i] = v in y's dtype (BF16: rounded to nearest even, as a cast to bfloat16) */
static inline void store1(void *y, int dtype, size_t i, float v) {
    if (dtype == BF16) {
        uint32_t u;
        memcpy(&u, &v, 4);
        u += 0x7FFF + ((u >> 16) & 1); /* round to nearest even */
        ((uint16_t *)y)[i] = (uint16_t)(u >> 16);
    } else {
        ((float *)y)[i] = v;
    }
}

/* R rows of K activations quantized per block of 32: int8 values, then per block its scale, the exact sum of its
 * x, and 128 * scale * sum(q) (see decode_matmul.c). */
typedef struct {
    int8_t *q;
    float *dx, *sx, *cx;
} acts;

/* Output rows [n0, n1) of y [R, N] = x @ w.T for 4- or 8-bit weights (m is NULL for 8-bit). */
typedef struct {
    int bits; /* 4 or 8 */
    const uint8_t *qs;
    const uint16_t *d, *m;
    int N, K, R, ydtype, n0, n1;
    acts a;
    void *y;
} job;

size_t os_scratch_bytes(int R, int K);
acts os_split_scratch(void *scratch, int R, int K);
void os_quantize(const void *x, int dtype, int R, int K, acts a);
void os_dispatch(job j, size_t weight_bytes); /* runs j, split with the helper thread when it is worth it */
void os_step_helper(int on); /* 1 at a whole step's start, 0 at its end (see decode_matmul.c) */

#endif
