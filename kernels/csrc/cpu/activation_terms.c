// Activation rows quantized for the integer matmuls (int4_matmul.c, int8_matmul.c): each group of
// 32 inputs in two 8-bit terms, x ~ d * (high + low / 256), high and low int8. d = the group's
// largest magnitude / 127; high = x * (1 / d) rounded half to even; low = (x - high * d) * (256 / d)
// rounded, |low| <= 128 clamped to 127 (kernels/cpu_matmul.py's quantize_activations computes the
// same); a group of zeros has d = 0 and both terms 0. The error, at most d / 512, is 1/65,000 of
// the group's largest input: below the bfloat16 rounding of any product it feeds.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"
#include "kernels.h"

#define GROUP 32

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

static inline __m512 bf16_lanes(const uint16_t* x) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)x)), 16));
}

static inline void quantize_half(__m512 x, __m512 d, __m512 inverse, int8_t* high, int8_t* low) {
    const __m512i rounded = _mm512_cvtps_epi32(_mm512_mul_ps(x, inverse));
    const __m512 rest = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(rounded), d, x);
    _mm_storeu_si128((__m128i*)high, _mm512_cvtsepi32_epi8(rounded));
    const __m512i fine = _mm512_cvtps_epi32(_mm512_mul_ps(rest, _mm512_mul_ps(inverse, _mm512_set1_ps(256.0f))));
    _mm_storeu_si128((__m128i*)low, _mm512_cvtsepi32_epi8(_mm512_min_epi32(fine, _mm512_set1_epi32(127))));
}

// high and low [32], *d, and *sum: the float sum of the group's x.
static inline void quantize_group(const uint16_t* x, int8_t* high, int8_t* low, float* d, float* sum) {
    const __m512 first = bf16_lanes(x), second = bf16_lanes(x + 16);
    *d = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(first), _mm512_abs_ps(second))) / 127.0f;
    const __m512 scale = _mm512_set1_ps(*d), inverse = _mm512_set1_ps(*d > 0.0f ? 1.0f / *d : 0.0f);
    quantize_half(first, scale, inverse, high, low);
    quantize_half(second, scale, inverse, high + 16, low + 16);
    *sum = _mm512_reduce_add_ps(_mm512_add_ps(first, second));
}

#else  // the same steps a value at a time (the sum in another order)

static void quantize_group(const uint16_t* x, int8_t* high, int8_t* low, float* d, float* sum) {
    float values[GROUP], largest = 0.0f, total = 0.0f;
    for (int k = 0; k < GROUP; k++) {
        values[k] = bf16_to_float(x[k]);
        largest = fmaxf(largest, fabsf(values[k]));
    }
    *d = largest / 127.0f;
    const float inverse = *d > 0.0f ? 1.0f / *d : 0.0f;
    for (int k = 0; k < GROUP; k++) {
        const float rounded = nearbyintf(values[k] * inverse);
        high[k] = (int8_t)rounded;
        low[k] = (int8_t)fminf(nearbyintf(fmaf(-rounded, *d, values[k]) * (inverse * 256.0f)), 127.0f);
        total += values[k];
    }
    *sum = total;
}
#endif

// x [rows, K] bfloat16 (row stride x_stride), K a multiple of 32, quantized into `terms`: high
// and low [rows][K] int8, d and sums [rows][K/32] float32, in two buffers the caller frees with
// free_activation_terms. Returns 0, or -2 when a buffer could not be allocated.
int quantize_activations(const uint16_t* x, int64_t x_stride, int rows, int K, ActivationTerms* terms) {
    const int groups = K / GROUP;
    terms->high = malloc(2 * (size_t)rows * K + 1);
    terms->d = malloc(sizeof(float) * (2 * (size_t)rows * groups + 1));
    if (!terms->high || !terms->d) {
        free_activation_terms(terms);
        return -2;
    }
    terms->low = terms->high + (size_t)rows * K;
    terms->sums = terms->d + (size_t)rows * groups;
#pragma omp parallel for schedule(static) if (rows > 16)
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) {
            const int64_t at = (int64_t)r * K + g * GROUP, group = (int64_t)r * groups + g;
            quantize_group(x + r * x_stride + g * GROUP, terms->high + at, terms->low + at, terms->d + group,
                           terms->sums + group);
        }
    return 0;
}

void free_activation_terms(ActivationTerms* terms) {
    free(terms->high);
    free(terms->d);
    terms->high = terms->low = NULL;
    terms->d = terms->sums = NULL;
}
