// out = x @ W^T for a bfloat16 weight W [N, K] in its own row-major layout (the LM head: the
// embedding it is tied to keeps that layout), float32 sums. Lanes run along the inputs here, so
// each output's lanes are summed once at the end (K/32 dot products per sum). Rows are taken up to
// 16 at a time per block of output rows, which then stays in cache for the next 16.
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

#define GROUP 32          // inputs per dot-product step: one 512-bit register of bfloat16
#define MAX_CHUNK 16      // activation rows kept in registers at once

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>

static inline __attribute__((always_inline)) void row_major_rows(
        const int ROWS, const uint16_t* x, int64_t x_stride, int K, const uint16_t* w_row, uint16_t* out,
        int64_t out_stride) {
    __m512 sum[MAX_CHUNK];
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) sum[r] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += GROUP) {
        const __m512bh w = (__m512bh)_mm512_loadu_si512(w_row + k);
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++)
            sum[r] = _mm512_dpbf16_ps(sum[r], w, (__m512bh)_mm512_loadu_si512(x + r * x_stride + k));
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) {
        out[r * out_stride] = bf16_from_float(_mm512_reduce_add_ps(sum[r]));
    }
}

#define ROW_CASE(n) case n: row_major_rows(n, x, x_stride, K, w_row, out, out_stride); break;

static void row_major_chunk(int rows, const uint16_t* x, int64_t x_stride, int K, const uint16_t* w_row,
                            uint16_t* out, int64_t out_stride) {
    switch (rows) {
        ROW_CASE(1) ROW_CASE(2) ROW_CASE(3) ROW_CASE(4) ROW_CASE(5) ROW_CASE(6) ROW_CASE(7) ROW_CASE(8)
        ROW_CASE(9) ROW_CASE(10) ROW_CASE(11) ROW_CASE(12) ROW_CASE(13) ROW_CASE(14) ROW_CASE(15) ROW_CASE(16)
    }
}

enum { ROW_BLOCK = 64 };  // output rows a thread takes at once: 64 x K bfloat16 stay in L2 across chunks

// x [rows, K] bfloat16 (row stride x_stride), w [N, K] bfloat16 contiguous, out [rows, N] bfloat16
// (row stride out_stride). Returns 0, or -1 for a K not a multiple of 32 or a machine without
// AVX-512 BF16 (the caller then uses torch).
int bf16_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const uint16_t* w, int N, uint16_t* out,
                int64_t out_stride) {
    if (K % GROUP || rows < 0) return -1;
#pragma omp parallel for schedule(static)
    for (int block = 0; block < (N + ROW_BLOCK - 1) / ROW_BLOCK; block++)
        for (int r = 0; r < rows; r += MAX_CHUNK)
            for (int n = block * ROW_BLOCK; n < N && n < (block + 1) * ROW_BLOCK; n++)
                row_major_chunk(rows - r < MAX_CHUNK ? rows - r : MAX_CHUNK, x + r * x_stride, x_stride, K,
                                w + (int64_t)n * K, out + r * out_stride + n, out_stride);
    return 0;
}
#else  // no AVX-512 BF16: torch multiplies
int bf16_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const uint16_t* w, int N, uint16_t* out,
                int64_t out_stride) {
    (void)x; (void)x_stride; (void)rows; (void)K; (void)w; (void)N; (void)out; (void)out_stride;
    return -1;
}
#endif
