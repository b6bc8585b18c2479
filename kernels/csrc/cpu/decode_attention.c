// Paged decode attention on the CPU: one query token per row, keys and values read in place from
// the paged cache (kernels/contract.py layout: [num_blocks, block_size, num_kv_heads, head_dim]),
// no gathered copies. Where the build has AVX-512 BF16, bfloat16 rows go to decode_attention_bf16.c;
// here, the portable path: one task per (row, kv head), its group of query heads sharing every key
// and value load, each row converted to float32. The torch reference (kernels/ref.py) is the spec;
// tests compare the two. Built without -ffast-math: a shared library built with it may switch the
// whole process (torch included) to flush denormals to zero.
#include <stdint.h>
#include <string.h>

#include "decode_attention.h"
#include "kernels.h"

// Element types of query, caches and output: 16-bit bfloat16 or 32-bit float.
static void load_row(float* dst, const void* src, int n, int is_bf16) {
    if (is_bf16) {
        for (int i = 0; i < n; i++) dst[i] = bf16_to_float(((const uint16_t*)src)[i]);
    } else {
        memcpy(dst, src, (size_t)n * 4);
    }
}


// Sixteen floats as one value: GCC lowers it to one 512-bit register, or two 256-bit ones.
enum { LANES = 16 };
typedef float Lanes __attribute__((vector_size(LANES * sizeof(float))));

static inline Lanes load_lanes(const float* p) {
    Lanes v;
    memcpy(&v, p, sizeof(v));
    return v;
}

typedef float Lanes8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Lanes4 __attribute__((vector_size(4 * sizeof(float))));

// The sum of a register's lanes by halving (4 dependent adds, not 15 in a chain: this sum runs once
// per key and query head).
static inline float sum_lanes(Lanes v) {
    const Lanes8 eight = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
                       + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const Lanes4 four = __builtin_shufflevector(eight, eight, 0, 1, 2, 3)
                      + __builtin_shufflevector(eight, eight, 4, 5, 6, 7);
    return (four[0] + four[2]) + (four[1] + four[3]);
}

// a . b over n floats (n a multiple of LANES): one register of partial sums, then its lanes.
static inline float dot(const float* a, const float* b, int n) {
    Lanes sum = {0};
    for (int i = 0; i < n; i += LANES) sum += load_lanes(a + i) * load_lanes(b + i);
    return sum_lanes(sum);
}

// acc[d] += sum over t of weights[t] * v[t][d] (v rows: vb[t * MAX_HEAD_DIM + d]), LANES values of
// acc at a time, held in a register across the block's keys; head_dim is a multiple of LANES.
static void accumulate_values(float* acc, const float* weights, const float* vb, int head_dim, int lo, int hi) {
    for (int d0 = 0; d0 < head_dim; d0 += LANES) {
        Lanes sum = load_lanes(acc + d0);
        for (int t = lo; t < hi; t++) sum += weights[t] * load_lanes(vb + t * MAX_HEAD_DIM + d0);
        memcpy(acc + d0, &sum, sizeof(sum));
    }
}


// Asks for a block's keys and values of one KV head ahead of use: blocks lie anywhere in the cache,
// and one head's rows are strided by the other heads', which the hardware prefetchers follow late.
static void prefetch_block(const Args* a, int32_t block, int kv_head, int64_t slot_bytes, int64_t head_bytes) {
    const int64_t offset = (int64_t)block * a->block_size * slot_bytes + kv_head * head_bytes;
    for (int t = 0; t < a->block_size; t++)
        for (int64_t line = 0; line < head_bytes; line += 64) {
            __builtin_prefetch(a->k_cache + offset + t * slot_bytes + line);
            __builtin_prefetch(a->v_cache + offset + t * slot_bytes + line);
        }
}

static void attend(const Args* a, int row, int kv_head) {
    const int group = a->group, head_dim = a->head_dim, block_size = a->block_size;
    const int elem = a->is_bf16 ? 2 : 4;
    const int64_t slot_bytes = (int64_t)a->num_kv_heads * head_dim * elem, head_bytes = (int64_t)head_dim * elem;
    const int ctx = a->ctx_lens[row];
    const int first = first_key(a, ctx);
    float q[group * head_dim], acc[group * head_dim], scores[group * MAX_BLOCK];
    float running_max[group], denom[group];
    float vb[MAX_BLOCK * MAX_HEAD_DIM], row_f32[MAX_HEAD_DIM];
    const char* q_base = a->query + a->q_rows[row] * a->q_row_bytes + (int64_t)kv_head * group * head_bytes;
    load_row(q, q_base, group * head_dim, a->is_bf16);
    for (int i = 0; i < group * head_dim; i++) q[i] *= a->scale;
    memset(acc, 0, sizeof(acc));
    memset(denom, 0, sizeof(denom));
    const int32_t* table = a->block_tables + row * a->table_stride;
    for (int start = first - first % block_size; start < ctx; start += block_size) {
        const int64_t base = (int64_t)table[start / block_size] * block_size;
        const int lo = start < first ? first - start : 0;
        const int hi = ctx - start < block_size ? ctx - start : block_size;
        const int first_block = start <= first;
        const char* keys = a->k_cache + base * slot_bytes + kv_head * head_bytes;
        if (start + block_size < ctx) prefetch_block(a, table[start / block_size + 1], kv_head, slot_bytes, head_bytes);
        for (int t = lo; t < hi; t++) {
            load_row(row_f32, keys + t * slot_bytes, head_dim, a->is_bf16);
            for (int g = 0; g < group; g++) scores[g * MAX_BLOCK + t] = dot(q + g * head_dim, row_f32, head_dim);
        }
        for (int g = 0; g < group; g++)
            softmax_step(scores + g * MAX_BLOCK, lo, hi, running_max + g, denom + g, acc + g * head_dim, head_dim,
                         first_block);
        const char* values = a->v_cache + base * slot_bytes + kv_head * head_bytes;
        for (int t = lo; t < hi; t++) load_row(vb + t * MAX_HEAD_DIM, values + t * slot_bytes, head_dim, a->is_bf16);
        for (int g = 0; g < group; g++) accumulate_values(acc + g * head_dim, scores + g * MAX_BLOCK, vb, head_dim, lo, hi);
    }
    char* out = a->out + a->q_rows[row] * a->out_row_bytes + (int64_t)kv_head * group * head_bytes;
    for (int g = 0; g < group; g++)
        store_row(out + g * head_bytes, acc + g * head_dim, denom[g] > 0.0f ? 1.0f / denom[g] : 0.0f, head_dim,
                  a->is_bf16);
}

// Row strides are in elements. Returns 0, or -1 for a head_dim (a multiple of 16, at most 256) or a
// block_size (at most 64) beyond the limits.
int decode_attention(const void* query, int64_t q_row_stride, const int64_t* q_rows, const void* k_cache,
                     const void* v_cache, const int32_t* block_tables, int64_t table_stride,
                     const int32_t* ctx_lens, int num_rows, int num_q_heads, int num_kv_heads, int head_dim,
                     int block_size, int window, float scale, void* out, int64_t out_row_stride, int is_bf16) {
    if (head_dim > MAX_HEAD_DIM || head_dim % LANES || block_size > MAX_BLOCK) return -1;
    const int elem = is_bf16 ? 2 : 4;
    const Args a = {query, q_row_stride * elem, q_rows, k_cache, v_cache, block_tables, table_stride, ctx_lens,
                    num_rows, num_q_heads, num_q_heads / num_kv_heads, num_kv_heads, head_dim, block_size, window,
                    is_bf16, scale, out, out_row_stride * elem};
    if (decode_attention_bf16(&a) == 0) return 0;
#pragma omp parallel for schedule(dynamic)
    for (int task = 0; task < num_rows * num_kv_heads; task++) attend(&a, task / num_kv_heads, task % num_kv_heads);
    return 0;
}
