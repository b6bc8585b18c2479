// out = x @ W^T for a weight kept as 4-bit codes, value = code * scale + min per group of 32
// inputs (GGUF's Q4_0, Q4_1 and Q4_K hold this form), bfloat16 activations and outputs.
//
// No weight is dequantized. Each code becomes the bfloat16 value 128 + code by ORing it into the
// mantissa of 128, and AVX-512 BF16 dot products (two products a lane, float32 sums) give, per
// group, D = x . (128 + code); then x . w = scale * D + (min - 128 * scale) * sum(x), sum(x) over
// the group's inputs, computed once per call. That is the exact weights' product (no bfloat16
// rounding of code * scale + min) at about half the instructions a weight of dequantizing first.
// Lanes run across output rows, not along the inputs, so no sum is reduced across lanes: a tile
// is 16 output rows, lane i its row i, and each step takes one input pair (k, k+1) of all 16 rows,
// for up to 16 activation rows at once (their sums held in registers).
//
// Layout (kernels/cpu_matmul.py packs it), per tile of 16 output rows:
//   codes  [K/2][16] bytes: for input pair p, byte j holds in its low nibble the code of row j/2,
//          input 2p + j%2, in its high nibble that of row 8 + j/2, input 2p + j%2;
//   params [K/32][2][16] float16: per group, the 16 rows' scales, then their mins.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"

#define TILE 16       // output rows per tile: one float32 lane each
#define GROUP 32      // inputs per scale and min
#define MAX_CHUNK 16  // activation rows at once

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define VECTORIZED 1

// The 32 codes of input pair p of a tile as bfloat16 values 128 + code: low nibbles (rows 0-7)
// first, then high nibbles (rows 8-15), so a dot product's lane i sums row i's inputs 2p and 2p+1.
static inline __m512bh biased_codes(const uint8_t* codes) {
    const __m128i packed = _mm_loadu_si128((const __m128i*)codes);
    const __m256i nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
                                             _mm256_set1_epi8(0x0f));
    return (__m512bh)_mm512_or_si512(_mm512_cvtepu8_epi16(nibbles), _mm512_set1_epi16(0x4300));
}

// ROWS activation rows (a constant after inlining: the sums stay in registers) against one tile;
// x_sums [ROWS][K/32] the rows' group sums.
static inline __attribute__((always_inline)) void tile_rows(
        const int ROWS, const uint16_t* x, int64_t x_stride, int K, const uint8_t* codes, const uint16_t* params,
        const float* x_sums, const uint16_t* bias, uint16_t* out, int64_t out_stride) {
    const int groups = K / GROUP;
    __m512 sum[MAX_CHUNK];
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) sum[r] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint16_t* group_params = params + (int64_t)g * 2 * TILE;
        const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)group_params));
        const __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(group_params + TILE)));
        const __m512 offset = _mm512_fnmadd_ps(_mm512_set1_ps(128.0f), scale, min);  // min - 128 * scale
        __m512 dot[MAX_CHUNK];
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++) dot[r] = _mm512_setzero_ps();
        for (int p = g * GROUP / 2; p < (g + 1) * GROUP / 2; p++) {
            const __m512bh w = biased_codes(codes + (int64_t)p * TILE);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) dot[r] = _mm512_dpbf16_ps(dot[r], w, bf16_pair_lanes(x + r * x_stride, 2 * p));
        }
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++)
            sum[r] = _mm512_fmadd_ps(offset, _mm512_set1_ps(x_sums[r * groups + g]),
                                     _mm512_fmadd_ps(dot[r], scale, sum[r]));
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) store_bf16_lanes(sum[r], bias, out + r * out_stride);
}

#define CASE(n) case n: tile_rows(n, x, x_stride, K, codes, params, x_sums, bias, out, out_stride); break;

static void chunk(int rows, const uint16_t* x, int64_t x_stride, int K, const uint8_t* codes, const uint16_t* params,
                  const float* x_sums, const uint16_t* bias, uint16_t* out, int64_t out_stride) {
    switch (rows) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
        CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
    }
}

#else  // no AVX-512 BF16: the exact weights one lane at a time (the sums in another order)
#define VECTORIZED 0

static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {  // subnormal half: a normal float
        int shift = 0;
        while (!(mantissa & 0x400u)) { mantissa <<= 1; shift++; }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// The 16 rows' weights at input pair p of a tile: w[2 * row + (k % 2)].
static void weights_of_pair(const uint8_t* codes, const uint16_t* params, float w[2 * TILE]) {
    for (int j = 0; j < TILE; j++) {
        const int lo_row = j / 2, hi_row = TILE / 2 + j / 2;
        w[2 * lo_row + j % 2] = (float)(codes[j] & 0x0f) * half_to_float(params[lo_row]) + half_to_float(params[TILE + lo_row]);
        w[2 * hi_row + j % 2] = (float)(codes[j] >> 4) * half_to_float(params[hi_row]) + half_to_float(params[TILE + hi_row]);
    }
}

static void chunk(int rows, const uint16_t* x, int64_t x_stride, int K, const uint8_t* codes, const uint16_t* params,
                  const float* x_sums, const uint16_t* bias, uint16_t* out, int64_t out_stride) {
    (void)x_sums;
    float sum[MAX_CHUNK][TILE] = {{0}};
    float w[2 * TILE];
    for (int p = 0; p < K / 2; p++) {
        weights_of_pair(codes + (int64_t)p * TILE, params + (int64_t)(2 * p / GROUP) * 2 * TILE, w);
        for (int r = 0; r < rows; r++) {
            const float x0 = bf16_to_float(x[r * x_stride + 2 * p]), x1 = bf16_to_float(x[r * x_stride + 2 * p + 1]);
            for (int i = 0; i < TILE; i++) sum[r][i] += w[2 * i] * x0 + w[2 * i + 1] * x1;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < TILE; i++)
            out[r * out_stride + i] = bf16_from_float(sum[r][i] + (bias ? bf16_to_float(bias[i]) : 0.0f));
}
#endif

// x_sums [rows][K/32]: each row's sum over each group of 32 inputs, in float32.
static void group_sums(const uint16_t* x, int64_t x_stride, int rows, int K, float* x_sums) {
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < K / GROUP; g++) {
            float total = 0.0f;
            for (int k = g * GROUP; k < (g + 1) * GROUP; k++) total += bf16_to_float(x[r * x_stride + k]);
            x_sums[r * (K / GROUP) + g] = total;
        }
}

// x [rows, K] bfloat16 (row stride x_stride elements), out [rows, N] bfloat16 (row stride
// out_stride), bias [N] bfloat16 or NULL. K a multiple of 32, N of 16. Returns 0, or -1 for a
// shape it does not take, -2 when a buffer could not be allocated.
int int4_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const uint8_t* codes, const uint16_t* params,
                const uint16_t* bias, int N, uint16_t* out, int64_t out_stride) {
    if (K % GROUP || N % TILE || rows < 0) return -1;
    const int tiles = N / TILE, groups = K / GROUP;
    float* x_sums = malloc(sizeof(float) * ((size_t)rows * groups + 1));
    if (!x_sums) return -2;
    group_sums(x, x_stride, rows, K, x_sums);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tiles; t++) {
        const uint8_t* tile_codes = codes + (int64_t)t * TILE * (K / 2);
        const uint16_t* tile_params = params + (int64_t)t * groups * 2 * TILE;
        for (int r = 0; r < rows; r += MAX_CHUNK)
            chunk(rows - r < MAX_CHUNK ? rows - r : MAX_CHUNK, x + r * x_stride, x_stride, K, tile_codes, tile_params,
                  x_sums + (int64_t)r * groups, bias ? bias + t * TILE : NULL, out + r * out_stride + t * TILE,
                  out_stride);
    }
    free(x_sums);
    return 0;
}

// 1 when built with AVX-512 BF16; 0 for the portable branch, far slower than torch's int4 kernel.
int int4_matmul_vectorized(void) { return VECTORIZED; }
