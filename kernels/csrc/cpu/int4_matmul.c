// out = x @ W^T for a weight kept as 4-bit codes, value = code * scale + min per group of 32
// inputs (GGUF's Q4_0, Q4_1 and Q4_K hold this form), bfloat16 activations and outputs.
//
// No weight is dequantized, and the products are integer: each activation row is quantized per
// group of 32 inputs in two 8-bit terms, x ~ d * (high + low / 256) (activation_terms.c: about a
// bfloat16 rounding), and AVX-512 VNNI dot products of the unsigned codes with each signed term
// (four products a lane, int32 sums) give, per group, D = sum(code * (256 * high + low)), exact.
// Then x . w = scale * d / 256 * D + min * sum(x), sum(x) the group's float sum of the inputs.
// Beside the bfloat16 dot products this replaces (two products a lane, each code widened to a
// bfloat16 first), it takes about as many instructions, yet ran 1.7x as fast at 16 rows and 2.3x
// at 128 on a Xeon (family 6 model 207): the integer dot products issue faster there, and a code
// costs a fifth of the unpacking. (One 8-bit term, as llama.cpp's Q8 blocks, was faster still and
// flipped greedy tokens the tests hold.)
// Lanes run across output rows, not along the inputs, so no sum is reduced across lanes: a tile
// is 16 output rows, lane i its row i, and each step takes four inputs of all 16 rows, for up to
// 8 activation rows at once (their sums held in registers).
//
// Layout (kernels/cpu_matmul.py packs it), per tile of 16 output rows:
//   codes  [K/8][64] bytes: for inputs 8s..8s+7, byte 4i + b holds in its low nibble the code of
//          row i, input 8s + b, in its high nibble that of row i, input 8s + 4 + b;
//   params [K/32][2][16] float16: per group, the 16 rows' scales, then their mins.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"

#define TILE 16      // output rows per tile: one float32 lane each
#define GROUP 32     // inputs per scale and min, and per activation scale
#define MAX_CHUNK 8  // activation rows at once (8 int32 and 8 float32 sums in registers)

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define VECTORIZED 1

// Four int8 inputs broadcast to every lane.
static inline __m512i input_quad(const int8_t* q) {
    int32_t quad;
    memcpy(&quad, q, 4);
    return _mm512_set1_epi32(quad);
}

// ROWS activation rows (a constant after inlining: the sums stay in registers) against one tile;
// high and low [ROWS][K] the rows' two terms, d and x_sums [ROWS][K/32].
static inline __attribute__((always_inline)) void tile_rows(
        const int ROWS, const int8_t* high, const int8_t* low, int64_t q_stride, int K, const float* d,
        const float* x_sums, const uint8_t* codes, const uint16_t* params, const uint16_t* bias, uint16_t* out,
        int64_t out_stride) {
    const int groups = K / GROUP;
    const __m512i low_nibble = _mm512_set1_epi8(0x0f);
    __m512 sum[MAX_CHUNK];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++) sum[r] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint16_t* group_params = params + (int64_t)g * 2 * TILE;
        const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)group_params));
        const __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(group_params + TILE)));
        __m512i dot_high[MAX_CHUNK], dot_low[MAX_CHUNK];
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; r++) dot_high[r] = dot_low[r] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int s = 0; s < GROUP / 8; s++) {
            const __m512i packed = _mm512_loadu_si512(codes + ((int64_t)g * GROUP / 8 + s) * 64);
            const __m512i first = _mm512_and_si512(packed, low_nibble);                         // inputs 8s..8s+3
            const __m512i second = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibble);  // 8s+4..8s+7
#pragma GCC unroll 8
            for (int r = 0; r < ROWS; r++) {
                const int64_t at = r * q_stride + g * GROUP + 8 * s;
                dot_high[r] = _mm512_dpbusd_epi32(dot_high[r], first, input_quad(high + at));
                dot_high[r] = _mm512_dpbusd_epi32(dot_high[r], second, input_quad(high + at + 4));
                dot_low[r] = _mm512_dpbusd_epi32(dot_low[r], first, input_quad(low + at));
                dot_low[r] = _mm512_dpbusd_epi32(dot_low[r], second, input_quad(low + at + 4));
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; r++) {
            // 256 * high + low: at most 15 * 32 * (256 * 127 + 128) < 2^24, exact in float32
            const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(dot_high[r], 8), dot_low[r]);
            const __m512 row_scale = _mm512_mul_ps(scale, _mm512_set1_ps(d[r * groups + g] * (1.0f / 256.0f)));
            sum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), row_scale, sum[r]);
            sum[r] = _mm512_fmadd_ps(min, _mm512_set1_ps(x_sums[r * groups + g]), sum[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++) store_bf16_lanes(sum[r], bias, out + r * out_stride);
}

#define CASE(n) case n: tile_rows(n, high, low, q_stride, K, d, x_sums, codes, params, bias, out, out_stride); break;

static void chunk(int rows, const int8_t* high, const int8_t* low, int64_t q_stride, int K, const float* d,
                  const float* x_sums, const uint8_t* codes, const uint16_t* params, const uint16_t* bias,
                  uint16_t* out, int64_t out_stride) {
    switch (rows) { CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) }
}

#else  // no AVX-512 VNNI: the same integer sums and float steps, a lane at a time
#define VECTORIZED 0

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu, bits;
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

// The code of tile row i, input k, from the tile's codes.
static int code_at(const uint8_t* codes, int i, int k) {
    const uint8_t byte = codes[(int64_t)(k / 8) * 64 + 4 * i + k % 4];
    return k % 8 < 4 ? byte & 0x0f : byte >> 4;
}

static void chunk(int rows, const int8_t* high, const int8_t* low, int64_t q_stride, int K, const float* d,
                  const float* x_sums, const uint8_t* codes, const uint16_t* params, const uint16_t* bias,
                  uint16_t* out, int64_t out_stride) {
    const int groups = K / GROUP;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < TILE; i++) {
            float sum = 0.0f;
            for (int g = 0; g < groups; g++) {
                int32_t dot = 0;
                for (int k = g * GROUP; k < (g + 1) * GROUP; k++)
                    dot += code_at(codes, i, k) * (256 * high[r * q_stride + k] + low[r * q_stride + k]);
                const float scale = half_to_float(params[(int64_t)g * 2 * TILE + i]);
                const float min = half_to_float(params[(int64_t)g * 2 * TILE + TILE + i]);
                sum = fmaf((float)dot, scale * (d[r * groups + g] * (1.0f / 256.0f)), sum);
                sum = fmaf(min, x_sums[r * groups + g], sum);
            }
            out[r * out_stride + i] = bf16_from_float(sum + (bias ? bf16_to_float(bias[i]) : 0.0f));
        }
}
#endif

// x [rows, K] bfloat16 (row stride x_stride elements), out [rows, N] bfloat16 (row stride
// out_stride), bias [N] bfloat16 or NULL. K a multiple of 32, N of 16. Returns 0, or -1 for a
// shape it does not take, -2 when a buffer could not be allocated.
int int4_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const uint8_t* codes, const uint16_t* params,
                const uint16_t* bias, int N, uint16_t* out, int64_t out_stride) {
    if (K % GROUP || N % TILE || rows < 0) return -1;
    const int tiles = N / TILE, groups = K / GROUP;
    ActivationTerms terms;
    if (quantize_activations(x, x_stride, rows, K, &terms)) return -2;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tiles; t++) {
        const uint8_t* tile_codes = codes + (int64_t)t * TILE * (K / 2);
        const uint16_t* tile_params = params + (int64_t)t * groups * 2 * TILE;
        for (int r = 0; r < rows; r += MAX_CHUNK)
            chunk(rows - r < MAX_CHUNK ? rows - r : MAX_CHUNK, terms.high + (int64_t)r * K, terms.low + (int64_t)r * K,
                  K, K, terms.d + (int64_t)r * groups, terms.sums + (int64_t)r * groups, tile_codes, tile_params,
                  bias ? bias + t * TILE : NULL, out + r * out_stride + t * TILE, out_stride);
    }
    free_activation_terms(&terms);
    return 0;
}

// 1 when built with AVX-512 VNNI and BF16; 0 for the portable branch, far slower than torch's int4 kernel.
int int4_matmul_vectorized(void) { return VECTORIZED; }
