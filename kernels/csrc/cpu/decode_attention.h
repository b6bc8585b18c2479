// What the two decode attention paths share: the portable one (decode_attention.c, also the
// dispatcher) and the AVX-512 BF16 one (decode_attention_bf16.c). Softmax is online, block by block,
// with float32 accumulators; both read the paged cache (kernels/contract.py layout: [num_blocks,
// block_size, num_kv_heads, head_dim]) in place.
#ifndef FORGE_DECODE_ATTENTION_H
#define FORGE_DECODE_ATTENTION_H
#include <stdint.h>
#include <string.h>

#include "bf16.h"

enum { MAX_HEAD_DIM = 256, MAX_BLOCK = 64 };

typedef struct {
    const char* query;
    int64_t q_row_bytes;
    const int64_t* q_rows;
    const char* k_cache;
    const char* v_cache;
    const int32_t* block_tables;
    int64_t table_stride;
    const int32_t* ctx_lens;
    int num_rows, num_q_heads, group, num_kv_heads, head_dim, block_size, window, is_bf16;
    float scale;
    char* out;
    int64_t out_row_bytes;
} Args;

// The bfloat16 path over all rows; returns -1 where it does not apply (float32, a head_dim not a
// multiple of 32, a build without AVX-512 BF16), and the portable path runs instead.
int decode_attention_bf16(const Args* a);

// The first key a row attends to: its sliding window's start, or 0.
static inline int first_key(const Args* a, int ctx) {
    return a->window > 0 && ctx > a->window ? ctx - a->window : 0;
}

// e^x for x <= 0 (softmax weights), vectorizable: 2^(x log2 e) split into 2^n * 2^f, f in [-0.5, 0.5],
// 2^f by its degree-6 Taylor polynomial (relative error < 2e-7, float32's own rounding). Below -87
// the weight is clamped to about 1e-38, which no float32 sum of weights >= 1 can tell from zero.
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float t = x * 1.44269504088896341f;
    const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23, vectorizes
    const float f = (t - n) * 0.69314718055994531f;
    const float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.66666667e-1f + f * (4.16666667e-2f
                    + f * (8.33333333e-3f + f * 1.38888889e-3f)))));
    const union { int32_t bits; float value; } scale = {((int32_t)n + 127) << 23};  // a union, not memcpy: vectorizes
    return p * scale.value;
}

// Folds a block's scores [lo, hi) into one query head's running softmax: scores become weights.
static inline void softmax_step(float* scores, int lo, int hi, float* running_max, float* denom, float* acc,
                                int head_dim, int first_block) {
    float block_max = scores[lo];
    for (int t = lo + 1; t < hi; t++) block_max = scores[t] > block_max ? scores[t] : block_max;
    if (!first_block) {
        if (*running_max > block_max) block_max = *running_max;
        const float rescale = exp_nonpositive(*running_max - block_max);
        *denom *= rescale;
#pragma omp simd
        for (int d = 0; d < head_dim; d++) acc[d] *= rescale;
    }
    *running_max = block_max;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int t = lo; t < hi; t++) {
        scores[t] = exp_nonpositive(scores[t] - block_max);
        sum += scores[t];
    }
    *denom += sum;
}

// dst = src * factor, n values, as float32 or rounded to bfloat16.
static inline void store_row(void* dst, const float* src, float factor, int n, int is_bf16) {
    if (!is_bf16) {
        for (int i = 0; i < n; i++) ((float*)dst)[i] = src[i] * factor;
        return;
    }
    for (int i = 0; i < n; i++) ((uint16_t*)dst)[i] = bf16_from_float(src[i] * factor);
}
#endif
