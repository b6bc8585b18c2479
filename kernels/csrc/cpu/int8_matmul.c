// out = x @ W^T for a weight kept as 8-bit codes with one float16 scale per 32 inputs (value =
// code * scale, GGUF's Q8_0), bfloat16 activations and outputs: the LM head of a checkpoint that
// stores it quantized: half the bytes of its bfloat16 copy to stream each step.
//
// Each code converts exactly to bfloat16 (any integer up to 256 is one), AVX-512 BF16 dot products
// sum a group's products in float32, and the group's scale multiplies the sum. Lanes run across
// output rows as in int4_matmul.c: a tile is 16 output rows, lane i its row i, each step one input
// pair (k, k+1) of all 16 rows, for up to 16 activation rows at once.
//
// Layout (kernels/cpu_matmul.py packs it), per tile of 16 output rows:
//   codes  [K/2][32] int8: for input pair p, byte j is row j/2, input 2p + j%2;
//   scales [K/32][16] float16: per group, the 16 rows' scales.
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

#define TILE 16
#define GROUP 32
#define MAX_CHUNK 16

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>

// The 32 codes of input pair p as bfloat16: elements 2i and 2i+1 row i's inputs 2p and 2p+1.
static inline __m512bh codes_of_pair(const int8_t* codes) {
    const __m256i bytes = _mm256_loadu_si256((const __m256i*)codes);
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(bytes)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(bytes, 1)));
    return _mm512_cvtne2ps_pbh(hi, lo);
}

static inline __attribute__((always_inline)) void tile_rows(const int ROWS, const uint16_t* x, int64_t x_stride,
                                                            int K, const int8_t* codes, const uint16_t* scales,
                                                            uint16_t* out, int64_t out_stride) {
    __m512 sum[MAX_CHUNK];
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) sum[r] = _mm512_setzero_ps();
    for (int g = 0; g < K / GROUP; g++) {
        const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(scales + (int64_t)g * TILE)));
        __m512 dot[MAX_CHUNK];
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++) dot[r] = _mm512_setzero_ps();
        for (int p = g * GROUP / 2; p < (g + 1) * GROUP / 2; p++) {
            const __m512bh w = codes_of_pair(codes + (int64_t)p * 2 * TILE);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) dot[r] = _mm512_dpbf16_ps(dot[r], w, bf16_pair_lanes(x + r * x_stride, 2 * p));
        }
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++) sum[r] = _mm512_fmadd_ps(dot[r], scale, sum[r]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) store_bf16_lanes(sum[r], NULL, out + r * out_stride);
}

#define CASE(n) case n: tile_rows(n, x, x_stride, K, codes, scales, out, out_stride); break;

static void chunk(int rows, const uint16_t* x, int64_t x_stride, int K, const int8_t* codes, const uint16_t* scales,
                  uint16_t* out, int64_t out_stride) {
    switch (rows) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
        CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
    }
}

// x [rows, K] bfloat16 (row stride x_stride), out [rows, N] bfloat16 (row stride out_stride); K a
// multiple of 32, N of 16. Returns 0, or -1 for a shape it does not take or a machine without
// AVX-512 BF16 (the caller then multiplies the bfloat16 copy).
int int8_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const int8_t* codes, const uint16_t* scales,
                int N, uint16_t* out, int64_t out_stride) {
    if (K % GROUP || N % TILE || rows < 0) return -1;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N / TILE; t++)
        for (int r = 0; r < rows; r += MAX_CHUNK)
            chunk(rows - r < MAX_CHUNK ? rows - r : MAX_CHUNK, x + r * x_stride, x_stride, K,
                  codes + (int64_t)t * TILE * K, scales + (int64_t)t * (K / GROUP) * TILE,
                  out + r * out_stride + t * TILE, out_stride);
    return 0;
}
#else
int int8_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const int8_t* codes, const uint16_t* scales,
                int N, uint16_t* out, int64_t out_stride) {
    (void)x; (void)x_stride; (void)rows; (void)K; (void)codes; (void)scales; (void)N; (void)out; (void)out_stride;
    return -1;
}
#endif
