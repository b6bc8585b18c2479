// out = x @ W^T for a weight kept as 4-bit codes, value = code * scale + min per group of 32
// inputs (GGUF's Q4_0, Q4_1 and Q4_K hold this form), bfloat16 activations and outputs.
//
// Each weight is dequantized once, in registers, to the bfloat16 a float copy of it would hold (a
// fused multiply-add: a rare tie may round the other way), then multiplied with AVX-512 BF16 dot
// products (two products a lane, float32 sums): the float path's result up to summation order,
// at a quarter of its memory traffic. Lanes run
// across output rows, not along the inputs, so no sum is reduced across lanes: a tile is 16 output
// rows, lane i its row i, and each step takes one input pair (k, k+1) of all 16 rows.
//
// Layout (kernels/cpu_matmul.py packs it), per tile of 16 output rows:
//   codes  [K/2][16] bytes: for input pair p, byte j holds in its low nibble the code of row j/2,
//          input 2p + j%2, in its high nibble that of row 8 + j/2, input 2p + j%2;
//   params [K/32][2][16] float16: per group, the 16 rows' scales, then their mins.
// With more than 16 activation rows a tile is dequantized once into a per-thread buffer and read
// back for each chunk of 16 rows.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define TILE 16           // output rows per tile: one float32 lane each
#define GROUP 32          // inputs per scale and min
#define MAX_CHUNK 16      // activation rows kept in registers at once

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define VECTORIZED 1

typedef struct { __m512 scale_lo, scale_hi, min_lo, min_hi; } GroupParams;

// Lanes 0-15 of the float32 halves follow the byte order: the low half is rows 0-7 (two lanes
// each, one per input of the pair), the high half rows 8-15.
static inline GroupParams group_params(const uint16_t* params) {
    const __m512i lo_rows = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i hi_rows = _mm512_add_epi32(lo_rows, _mm512_set1_epi32(8));
    const __m512 scales = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)params));
    const __m512 mins = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(params + TILE)));
    return (GroupParams){_mm512_permutexvar_ps(lo_rows, scales), _mm512_permutexvar_ps(hi_rows, scales),
                         _mm512_permutexvar_ps(lo_rows, mins), _mm512_permutexvar_ps(hi_rows, mins)};
}

static inline __m512bh dequantize_pair(const uint8_t* codes, const GroupParams* g) {
    const __m128i packed = _mm_loadu_si128((const __m128i*)codes);
    const __m128i nibble = _mm_set1_epi8(0x0f);
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(packed, nibble)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(packed, 4), nibble)));
    return _mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, g->scale_hi, g->min_hi), _mm512_fmadd_ps(lo, g->scale_lo, g->min_lo));
}

static inline __m512bh input_pair(const uint16_t* x_row, int k) {
    uint32_t pair;
    memcpy(&pair, x_row + k, 4);
    return (__m512bh)_mm512_set1_epi32((int)pair);
}

static inline void store_rows(__m512 sum, const uint16_t* bias, uint16_t* out_row) {
    if (bias) sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)bias)), 16)));
    _mm256_storeu_si256((__m256i*)out_row, (__m256i)_mm512_cvtneps_pbh(sum));
}

// ROWS activation rows (a constant after inlining: the sums stay in registers) against one tile;
// `dense` (if not NULL) is the tile already dequantized, [K/2][32] bfloat16.
static inline __attribute__((always_inline)) void tile_rows(
        const int ROWS, const uint16_t* x, int64_t x_stride, int K, const uint8_t* codes, const uint16_t* params,
        const uint16_t* dense, const uint16_t* bias, uint16_t* out, int64_t out_stride) {
    __m512 sum[MAX_CHUNK];
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) sum[r] = _mm512_setzero_ps();
    for (int g = 0; g < K / GROUP; g++) {
        const __m512 zero = _mm512_setzero_ps();
        const GroupParams gp = dense ? (GroupParams){zero, zero, zero, zero} : group_params(params + (int64_t)g * 2 * TILE);
        for (int p = g * GROUP / 2; p < (g + 1) * GROUP / 2; p++) {
            const __m512bh w = dense ? (__m512bh)_mm512_loadu_si512(dense + (int64_t)p * 2 * TILE)
                                     : dequantize_pair(codes + (int64_t)p * TILE, &gp);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) sum[r] = _mm512_dpbf16_ps(sum[r], w, input_pair(x + r * x_stride, 2 * p));
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; r++) store_rows(sum[r], bias, out + r * out_stride);
}

static void dequantize_tile(const uint8_t* codes, const uint16_t* params, int K, uint16_t* dense) {
    for (int g = 0; g < K / GROUP; g++) {
        const GroupParams gp = group_params(params + (int64_t)g * 2 * TILE);
        for (int p = g * GROUP / 2; p < (g + 1) * GROUP / 2; p++)
            _mm512_storeu_si512(dense + (int64_t)p * 2 * TILE, (__m512i)dequantize_pair(codes + (int64_t)p * TILE, &gp));
    }
}

#define CASE(n) case n: tile_rows(n, x, x_stride, K, codes, params, dense, bias, out, out_stride); break;

static void chunk(int rows, const uint16_t* x, int64_t x_stride, int K, const uint8_t* codes, const uint16_t* params,
                  const uint16_t* dense, const uint16_t* bias, uint16_t* out, int64_t out_stride) {
    switch (rows) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
        CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
    }
}

#else  // no AVX-512 BF16: the same arithmetic one lane at a time
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

static inline uint16_t float_to_bf16(float f) {  // nearest, ties to even, as torch rounds
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits | 0x400000u) >> 16);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static inline float bf16_to_float(uint16_t b) {
    const uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// The 16 rows' weights at input pair p of a tile, as bfloat16 pairs: w[2 * row + (k % 2)].
static void dequantize_pair_scalar(const uint8_t* codes, const uint16_t* params, uint16_t w[2 * TILE]) {
    for (int j = 0; j < TILE; j++) {
        const int lo_row = j / 2, hi_row = TILE / 2 + j / 2;
        const float lo = (float)(codes[j] & 0x0f) * half_to_float(params[lo_row]) + half_to_float(params[TILE + lo_row]);
        const float hi = (float)(codes[j] >> 4) * half_to_float(params[hi_row]) + half_to_float(params[TILE + hi_row]);
        w[2 * lo_row + j % 2] = float_to_bf16(lo);
        w[2 * hi_row + j % 2] = float_to_bf16(hi);
    }
}


static void chunk(int rows, const uint16_t* x, int64_t x_stride, int K, const uint8_t* codes, const uint16_t* params,
                  const uint16_t* dense, const uint16_t* bias, uint16_t* out, int64_t out_stride) {
    float sum[MAX_CHUNK][TILE] = {{0}};
    uint16_t w[2 * TILE];
    for (int p = 0; p < K / 2; p++) {
        if (dense) memcpy(w, dense + (int64_t)p * 2 * TILE, sizeof w);
        else dequantize_pair_scalar(codes + (int64_t)p * TILE, params + (int64_t)(2 * p / GROUP) * 2 * TILE, w);
        for (int r = 0; r < rows; r++) {
            const float x0 = bf16_to_float(x[r * x_stride + 2 * p]), x1 = bf16_to_float(x[r * x_stride + 2 * p + 1]);
            for (int i = 0; i < TILE; i++) sum[r][i] += bf16_to_float(w[2 * i]) * x0 + bf16_to_float(w[2 * i + 1]) * x1;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < TILE; i++)
            out[r * out_stride + i] = float_to_bf16(sum[r][i] + (bias ? bf16_to_float(bias[i]) : 0.0f));
}

static void dequantize_tile(const uint8_t* codes, const uint16_t* params, int K, uint16_t* dense) {
    for (int p = 0; p < K / 2; p++)
        dequantize_pair_scalar(codes + (int64_t)p * TILE, params + (int64_t)(2 * p / GROUP) * 2 * TILE,
                               dense + (int64_t)p * 2 * TILE);
}
#endif

// x [rows, K] bfloat16 (row stride x_stride elements), out [rows, N] bfloat16 (row stride
// out_stride), bias [N] bfloat16 or NULL. K a multiple of 32, N of 16. Returns 0, or -1 for a
// shape it does not take, -2 when a buffer could not be allocated.
int int4_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const uint8_t* codes, const uint16_t* params,
                const uint16_t* bias, int N, uint16_t* out, int64_t out_stride) {
    if (K % GROUP || N % TILE || rows < 0) return -1;
    const int tiles = N / TILE;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        uint16_t* dense = NULL;
        if (rows > MAX_CHUNK && !(dense = malloc((size_t)K * TILE * sizeof(uint16_t)))) failed = 1;
#pragma omp for schedule(static)
        for (int t = 0; t < tiles; t++) {
            if (failed) continue;
            const uint8_t* tile_codes = codes + (int64_t)t * TILE * (K / 2);
            const uint16_t* tile_params = params + (int64_t)t * (K / GROUP) * 2 * TILE;
            if (dense) dequantize_tile(tile_codes, tile_params, K, dense);
            for (int r = 0; r < rows; r += MAX_CHUNK)
                chunk(rows - r < MAX_CHUNK ? rows - r : MAX_CHUNK, x + r * x_stride, x_stride, K, tile_codes,
                      tile_params, dense, bias ? bias + t * TILE : NULL, out + r * out_stride + t * TILE, out_stride);
        }
        free(dense);
    }
    return failed ? -2 : 0;
}

// 1 when built with AVX-512 BF16; 0 for the portable branch, far slower than torch's int4 kernel.
int int4_matmul_vectorized(void) { return VECTORIZED; }
