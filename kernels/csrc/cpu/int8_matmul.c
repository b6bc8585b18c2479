// out = x @ W^T for a weight kept as 8-bit codes with one float16 scale per 32 inputs (value =
// code * scale, GGUF's Q8_0), bfloat16 activations and outputs: the LM head of a checkpoint that
// stores it quantized: half the bytes of its bfloat16 copy to stream each step.
//
// The products are integer, as in int4_matmul.c: the activations in two 8-bit terms per group of
// 32 (activation_terms.c), AVX-512 VNNI dot products of each term with the codes. VNNI multiplies
// unsigned by signed bytes, so a term q goes in as q + 128 (its sign bit flipped) and each group's
// sum of codes, stored beside its scales, takes the 128s back out:
// sum(code * q) = sum(code * (q + 128)) - 128 * sum(code). Lanes run across output rows: a tile is
// 16 output rows, lane i its row i, each step four inputs of all 16 rows, up to 8 activation rows at once.
//
// Layout (kernels/cpu_matmul.py packs it), per tile of 16 output rows:
//   codes  [K/4][64] int8: for inputs 4s..4s+3, byte 4i + b is row i, input 4s + b;
//   params [K/32][2][16] int16: per group, the 16 rows' scales (float16 bits), then their sums of codes.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"

#define TILE 16
#define GROUP 32
#define MAX_CHUNK 8

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512BF16__)
#include <immintrin.h>

// Four int8 inputs, each + 128 as an unsigned byte, broadcast to every lane.
static inline __m512i biased_quad(const int8_t* q) {
    uint32_t quad;
    memcpy(&quad, q, 4);
    return _mm512_set1_epi32((int)(quad ^ 0x80808080u));
}

static inline __attribute__((always_inline)) void tile_rows(
        const int ROWS, const int8_t* high, const int8_t* low, int K, const float* d, const int8_t* codes,
        const uint16_t* params, uint16_t* out, int64_t out_stride) {
    const int groups = K / GROUP;
    __m512 sum[MAX_CHUNK];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++) sum[r] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint16_t* group_params = params + (int64_t)g * 2 * TILE;
        const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)group_params));
        // (256 + 1) * 128 * sum(code): the bias of both terms, as 256 * high + low weighs them
        const __m512i bias = _mm512_mullo_epi32(
            _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i*)(group_params + TILE))), _mm512_set1_epi32(257 * 128));
        __m512i dot_high[MAX_CHUNK], dot_low[MAX_CHUNK];
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; r++) dot_high[r] = dot_low[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int s = 0; s < GROUP / 4; s++) {
            const __m512i w = _mm512_loadu_si512(codes + ((int64_t)g * GROUP / 4 + s) * 64);
#pragma GCC unroll 8
            for (int r = 0; r < ROWS; r++) {
                const int64_t at = (int64_t)r * K + g * GROUP + 4 * s;
                dot_high[r] = _mm512_dpbusd_epi32(dot_high[r], biased_quad(high + at), w);
                dot_low[r] = _mm512_dpbusd_epi32(dot_low[r], biased_quad(low + at), w);
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; r++) {
            // |256 * high-dot| < 2^28: int32 holds it; float32 rounds the sum below the output's bfloat16
            const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(dot_high[r], 8), dot_low[r]), bias);
            const __m512 row_scale = _mm512_mul_ps(scale, _mm512_set1_ps(d[r * groups + g] * (1.0f / 256.0f)));
            sum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), row_scale, sum[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++) store_bf16_lanes(sum[r], NULL, out + r * out_stride);
}

#define CASE(n) case n: tile_rows(n, high, low, K, d, codes, params, out, out_stride); break;

static void chunk(int rows, const int8_t* high, const int8_t* low, int K, const float* d, const int8_t* codes,
                  const uint16_t* params, uint16_t* out, int64_t out_stride) {
    switch (rows) { CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) }
}

// x [rows, K] bfloat16 (row stride x_stride), out [rows, N] bfloat16 (row stride out_stride); K a
// multiple of 32, N of 16. Returns 0, -1 for a shape it does not take or a machine without AVX-512
// VNNI and BF16 (the caller then multiplies the bfloat16 copy), -2 when a buffer could not be allocated.
int int8_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const int8_t* codes, const uint16_t* params,
                int N, uint16_t* out, int64_t out_stride) {
    if (K % GROUP || N % TILE || rows < 0) return -1;
    const int groups = K / GROUP;
    ActivationTerms terms;
    if (quantize_activations(x, x_stride, rows, K, &terms)) return -2;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N / TILE; t++)
        for (int r = 0; r < rows; r += MAX_CHUNK)
            chunk(rows - r < MAX_CHUNK ? rows - r : MAX_CHUNK, terms.high + (int64_t)r * K, terms.low + (int64_t)r * K,
                  K, terms.d + (int64_t)r * groups, codes + (int64_t)t * TILE * K, params + (int64_t)t * groups * 2 * TILE,
                  out + r * out_stride + t * TILE, out_stride);
    free_activation_terms(&terms);
    return 0;
}
#else
int int8_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const int8_t* codes, const uint16_t* params,
                int N, uint16_t* out, int64_t out_stride) {
    (void)x; (void)x_stride; (void)rows; (void)K; (void)codes; (void)params; (void)N; (void)out; (void)out_stride;
    return -1;
}
#endif
