/* What decode_step.c uses of decode_matmul.c: activation quantization and the (helper-split) matmul job. */
#ifndef OPENSERVE_DECODE_MATMUL_H
#define OPENSERVE_DECODE_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#define ABI_VERSION 2

enum { F32 = 0, BF16 = 1 };

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
