// The library's entry points, as kernels/*.py call them through ctypes; decoder.c calls them too.
// Tensors are bfloat16 (uint16_t) unless the argument says is_bf16; strides are in elements.
#ifndef FORGE_KERNELS_H
#define FORGE_KERNELS_H
#include <stdint.h>

void apply_token_bitmask(const float* logits, const int32_t* bitmask, float* out, int rows, int vocab, int words);

int bf16_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const uint16_t* w, int N, uint16_t* out,
                int64_t out_stride);

int decode_attention(const void* query, int64_t q_row_stride, const int64_t* q_rows, const void* k_cache,
                     const void* v_cache, const int32_t* block_tables, int64_t table_stride,
                     const int32_t* ctx_lens, int num_rows, int num_q_heads, int num_kv_heads, int head_dim,
                     int block_size, int window, float scale, void* out, int64_t out_row_stride, int is_bf16);

int int4_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const uint8_t* codes, const uint16_t* params,
                const uint16_t* bias, int N, uint16_t* out, int64_t out_stride);

// Activation rows in two 8-bit terms per group of 32 (activation_terms.c).
typedef struct {
    int8_t *high, *low;  // [rows][K]
    float *d, *sums;     // [rows][K/32]
} ActivationTerms;
int quantize_activations(const uint16_t* x, int64_t x_stride, int rows, int K, ActivationTerms* terms);
void free_activation_terms(ActivationTerms* terms);

int int8_matmul(const uint16_t* x, int64_t x_stride, int rows, int K, const int8_t* codes, const uint16_t* params,
                int N, uint16_t* out, int64_t out_stride);

void rms_norm(const void* x, const void* residual_in, const void* weight, void* out, void* residual_out,
              int num_tokens, int hidden, float eps, int is_bf16);

int store_kv(const char* key, int64_t key_row_bytes, const char* value, int64_t value_row_bytes, char* k_cache,
             char* v_cache, const int64_t* slots, int num_tokens, int64_t slot_bytes, int64_t num_slots);

#endif
