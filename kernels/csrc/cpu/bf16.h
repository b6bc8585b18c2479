// bfloat16 <-> float32 as torch converts: widening is exact; narrowing rounds to nearest, ties to
// even, and keeps NaN a NaN.
#ifndef FORGE_BF16_H
#define FORGE_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t bf16_from_float(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits = (bits & 0x7fffffffu) > 0x7f800000u ? (bits | 0x400000u) : bits + 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>

// Inputs k and k+1 of an activation row, broadcast to every lane: the pair a dot product of
// weights laid out with lanes across output rows (int4_matmul.c, int8_matmul.c) multiplies.
static inline __m512bh bf16_pair_lanes(const uint16_t* x_row, int k) {
    uint32_t pair;
    memcpy(&pair, x_row + k, 4);
    return (__m512bh)_mm512_set1_epi32((int)pair);
}

// 16 float32 output lanes (+ bias [16] bfloat16, if not NULL) rounded to bfloat16 into out_row.
static inline void store_bf16_lanes(__m512 sum, const uint16_t* bias, uint16_t* out_row) {
    if (bias) sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)bias)), 16)));
    _mm256_storeu_si256((__m256i*)out_row, (__m256i)_mm512_cvtneps_pbh(sum));
}
#endif

#endif
