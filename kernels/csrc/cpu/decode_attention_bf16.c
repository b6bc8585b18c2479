// Decode attention over bfloat16 rows on CPUs with AVX-512 BF16: dot products straight from the
// stored bfloat16 pairs, summed in float32, no row converted. Scores: 16 keys at a time, their
// partial sums folded together. Values: two keys' rows interleaved into pairs, weighted by their
// softmax weights rounded to bfloat16 (as the torch reference rounds its probabilities).
//
// One task reads a span of one row's blocks for every head: a block's keys of all KV heads lie
// together (6 KiB for SmolLM2), so the task streams whole blocks where a task per KV head read a
// strided third of each. Rows are split into spans (flash-decoding) when there are too few rows to
// keep every thread busy, and the spans' softmax states merged after.
#include "decode_attention.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>

enum { KEYS = 16, MIN_SPAN_BLOCKS = 4, TASKS_PER_THREAD = 4, MAX_HEADS_X_DIM = 16384 };

// partial[t] holds 16 partial sums of key t's score; returns their totals, lane t for key t. Pairs of
// vectors are folded within 128-bit lanes, then across them: 45 instructions for 16 keys, where
// summing each vector's lanes on its own takes about 5 dependent steps a key.
static inline __m512 sum_each_key(const __m512 partial[KEYS]) {
    __m512 pairs[8], quads[4];
    for (int i = 0; i < 8; i++)  // lane quad: [a0+a2, b0+b2, a1+a3, b1+b3] of keys a = 2i, b = 2i+1
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(partial[2 * i], partial[2 * i + 1]),
                                 _mm512_unpackhi_ps(partial[2 * i], partial[2 * i + 1]));
    for (int i = 0; i < 4; i++) {  // lane quad: keys 4i..4i+3, each summed over its quarter of the vector
        const __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
        quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 lo = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 hi = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
}

// scores[g * MAX_BLOCK + t] = q_g . k_t * scale for keys [lo, hi) of one block and one KV head (key
// t at keys + t * slot_bytes), each of the group's query heads held as `vectors` bfloat16 vectors.
static inline __attribute__((always_inline)) void score_keys(const __m512bh* q, int group, int vectors, const char* keys, int64_t slot_bytes,
                       int lo, int hi, float scale, float* scores) {
    const __m512 scale_lanes = _mm512_set1_ps(scale);
    for (int first = lo; first < hi; first += KEYS) {
        const int count = hi - first < KEYS ? hi - first : KEYS;
        __m512 partial[group][KEYS];
        for (int t = 0; t < KEYS; t++) {
            for (int g = 0; g < group; g++) partial[g][t] = _mm512_setzero_ps();
            if (t >= count) continue;
            const char* key = keys + (first + t) * slot_bytes;
            for (int i = 0; i < vectors; i++) {
                const __m512bh k = (__m512bh)_mm512_loadu_si512(key + i * 64);
                for (int g = 0; g < group; g++) partial[g][t] = _mm512_dpbf16_ps(partial[g][t], q[g * vectors + i], k);
            }
        }
        for (int g = 0; g < group; g++)
            _mm512_mask_storeu_ps(scores + g * MAX_BLOCK + first, (__mmask16)((1u << count) - 1),
                                  _mm512_mul_ps(sum_each_key(partial[g]), scale_lanes));
    }
}

// acc[g * head_dim ...] += sum over keys t in [lo, hi) of weights[g * MAX_BLOCK + t] * v_t for one
// KV head (value t at values + t * slot_bytes), two keys a step. Each 32-value chunk of acc is in
// the lanes' interleaved order (natural_order puts it back).
static inline __attribute__((always_inline)) void accumulate_values(float* acc, const float* weights, int group,
                                                                    int head_dim, const char* values,
                              int64_t slot_bytes, int lo, int hi) {
    uint16_t pairs[group][MAX_BLOCK + 1];  // weights as bfloat16, a zero past the last key for an odd count
    for (int g = 0; g < group; g++) {
        for (int t = lo; t < hi; t += KEYS) {
            const __mmask16 mask = (__mmask16)((1u << (hi - t < KEYS ? hi - t : KEYS)) - 1);
            _mm256_mask_storeu_epi16(pairs[g] + t, mask, (__m256i)_mm512_cvtneps_pbh(
                                         _mm512_maskz_loadu_ps(mask, weights + g * MAX_BLOCK + t)));
        }
        pairs[g][hi] = 0;
    }
    for (int chunk = 0; chunk < head_dim / 32; chunk++) {
        __m512 even[group], odd[group];  // 128-bit lane j: dims 8j+0..3 (even), 8j+4..7 (odd) of the chunk
        for (int g = 0; g < group; g++) {
            even[g] = _mm512_loadu_ps(acc + g * head_dim + chunk * 32);
            odd[g] = _mm512_loadu_ps(acc + g * head_dim + chunk * 32 + 16);
        }
        for (int t = lo; t < hi; t += 2) {
            const __m512i a = _mm512_loadu_si512(values + t * slot_bytes + chunk * 64);
            const __m512i b = t + 1 < hi ? _mm512_loadu_si512(values + (t + 1) * slot_bytes + chunk * 64)
                                         : _mm512_setzero_si512();
            const __m512bh low = (__m512bh)_mm512_unpacklo_epi16(a, b), high = (__m512bh)_mm512_unpackhi_epi16(a, b);
            for (int g = 0; g < group; g++) {
                uint32_t pair;
                memcpy(&pair, pairs[g] + t, 4);
                const __m512bh w = (__m512bh)_mm512_set1_epi32((int)pair);
                even[g] = _mm512_dpbf16_ps(even[g], low, w);
                odd[g] = _mm512_dpbf16_ps(odd[g], high, w);
            }
        }
        for (int g = 0; g < group; g++) {
            _mm512_storeu_ps(acc + g * head_dim + chunk * 32, even[g]);
            _mm512_storeu_ps(acc + g * head_dim + chunk * 32 + 16, odd[g]);
        }
    }
}

// Puts each 32-value chunk of `row` (n values) back in dimension order: lane 4j+i of its first half
// holds dim 8j+i, of its second half dim 8j+4+i.
static void natural_order(float* row, int n) {
    for (int chunk = 0; chunk < n; chunk += 32) {
        float interleaved[32];
        memcpy(interleaved, row + chunk, sizeof(interleaved));
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < 4; i++) {
                row[chunk + 8 * j + i] = interleaved[4 * j + i];
                row[chunk + 8 * j + 4 + i] = interleaved[16 + 4 * j + i];
            }
    }
}

// Asks for a whole block (every KV head's keys and values) ahead of use: blocks lie anywhere in
// the cache, and the hardware prefetchers find each one late.
static void prefetch_block(const Args* a, int32_t block, int64_t slot_bytes) {
    const int64_t bytes = a->block_size * slot_bytes, offset = (int64_t)block * bytes;
    for (int64_t line = 0; line < bytes; line += 64) {
        __builtin_prefetch(a->k_cache + offset + line);
        __builtin_prefetch(a->v_cache + offset + line);
    }
}

// One row's softmax state over a span of its blocks: every head's accumulator (num_q_heads x
// head_dim), running max and denom, and the block's scores (num_q_heads x MAX_BLOCK).
typedef struct {
    const __m512bh* q;  // num_q_heads x head_dim / 32 vectors
    float *scores, *acc, *running_max, *denom;
} SpanState;

// Folds keys [lo, hi) of one block (its keys and values at `keys` and `values`) into the state.
// Inlined with `group` a constant (attend_block_1 ... _8): each head's partial sums stay in registers.
static inline __attribute__((always_inline)) void attend_block(const Args* a, const SpanState* st, const char* keys,
                                                               const char* values, int lo, int hi, int first_block,
                                                               int group) {
    const int head_dim = a->head_dim, vectors = head_dim / 32;
    const int64_t head_bytes = (int64_t)head_dim * 2, slot_bytes = a->num_kv_heads * head_bytes;
    for (int h = 0; h < a->num_kv_heads; h++)
        score_keys(st->q + h * group * vectors, group, vectors, keys + h * head_bytes, slot_bytes, lo, hi, a->scale,
                   st->scores + h * group * MAX_BLOCK);
    for (int j = 0; j < a->num_q_heads; j++)
        softmax_step(st->scores + j * MAX_BLOCK, lo, hi, st->running_max + j, st->denom + j, st->acc + j * head_dim,
                     head_dim, first_block);
    for (int h = 0; h < a->num_kv_heads; h++)
        accumulate_values(st->acc + h * group * head_dim, st->scores + h * group * MAX_BLOCK, group, head_dim,
                          values + h * head_bytes, slot_bytes, lo, hi);
}

typedef void (*BlockFn)(const Args*, const SpanState*, const char*, const char*, int, int, int);
#define ATTEND_BLOCK_FOR(n)                                                                                        \
    static void attend_block_##n(const Args* a, const SpanState* st, const char* keys, const char* values, int lo, \
                                 int hi, int first_block) {                                                        \
        attend_block(a, st, keys, values, lo, hi, first_block, n);                                                 \
    }
ATTEND_BLOCK_FOR(1)
ATTEND_BLOCK_FOR(2)
ATTEND_BLOCK_FOR(3)
ATTEND_BLOCK_FOR(4)
ATTEND_BLOCK_FOR(5)
ATTEND_BLOCK_FOR(6)
ATTEND_BLOCK_FOR(7)
ATTEND_BLOCK_FOR(8)

static void attend_block_any(const Args* a, const SpanState* st, const char* keys, const char* values, int lo, int hi,
                             int first_block) {
    attend_block(a, st, keys, values, lo, hi, first_block, a->group);
}

static BlockFn block_fn(int group) {
    static const BlockFn by_group[] = {attend_block_any, attend_block_1, attend_block_2, attend_block_3, attend_block_4,
                                       attend_block_5, attend_block_6, attend_block_7, attend_block_8};
    return group < (int)(sizeof(by_group) / sizeof(by_group[0])) ? by_group[group] : attend_block_any;
}

// Every head of one row over its blocks [block_lo, block_hi): acc (num_q_heads x head_dim, in
// dimension order, not yet divided by denom), the running max and denom of each head. A span with
// no key leaves denom 0.
static void attend_span(const Args* a, int row, int block_lo, int block_hi, float* acc, float* running_max,
                        float* denom) {
    const int heads = a->num_q_heads, vectors = a->head_dim / 32;
    const int64_t slot_bytes = (int64_t)a->num_kv_heads * a->head_dim * 2;
    const int ctx = a->ctx_lens[row], first = first_key(a, ctx);
    const int32_t* table = a->block_tables + row * a->table_stride;
    const char* q_row = a->query + a->q_rows[row] * a->q_row_bytes;
    __m512bh q[heads * vectors];
    for (int i = 0; i < heads * vectors; i++) q[i] = (__m512bh)_mm512_loadu_si512(q_row + i * 64);
    float scores[heads * MAX_BLOCK];
    const SpanState st = {q, scores, acc, running_max, denom};
    memset(acc, 0, sizeof(float) * heads * a->head_dim);
    memset(denom, 0, sizeof(float) * heads);
    const BlockFn attend_one = block_fn(a->group);
    for (int block = block_lo; block < block_hi; block++) {
        const int start = block * a->block_size;
        const int lo = start < first ? first - start : 0, hi = ctx - start < a->block_size ? ctx - start : a->block_size;
        if (block + 1 < block_hi) prefetch_block(a, table[block + 1], slot_bytes);
        const int64_t base = (int64_t)table[block] * a->block_size * slot_bytes;
        attend_one(a, &st, a->k_cache + base, a->v_cache + base, lo, hi, block == block_lo);
    }
    natural_order(acc, heads * a->head_dim);
}

// The row's output from its spans' states (state s: acc, max and denom of every head).
static void merge_spans(const Args* a, int row, int spans, const float* accs, const float* maxes,
                        const float* denoms) {
    const int heads = a->num_q_heads, head_dim = a->head_dim;
    char* out = a->out + a->q_rows[row] * a->out_row_bytes;
    for (int j = 0; j < heads; j++) {
        float top = -3.0e38f, total = 0.0f, merged[MAX_HEAD_DIM] = {0};
        for (int s = 0; s < spans; s++)
            if (denoms[s * heads + j] > 0.0f && maxes[s * heads + j] > top) top = maxes[s * heads + j];
        for (int s = 0; s < spans; s++) {
            if (denoms[s * heads + j] <= 0.0f) continue;
            const float weight = exp_nonpositive(maxes[s * heads + j] - top);
            total += denoms[s * heads + j] * weight;
            const float* acc = accs + ((int64_t)s * heads + j) * head_dim;
            for (int d = 0; d < head_dim; d++) merged[d] += acc[d] * weight;
        }
        store_row(out + (int64_t)j * head_dim * 2, merged, total > 0.0f ? 1.0f / total : 0.0f, head_dim, 1);
    }
}

// Spans a row is split into: enough tasks for every thread, none shorter than MIN_SPAN_BLOCKS.
static int spans_per_row(const Args* a) {
    const int wanted = (TASKS_PER_THREAD * omp_get_max_threads() + a->num_rows - 1) / a->num_rows;
    int longest = 0;
    for (int r = 0; r < a->num_rows; r++) longest = a->ctx_lens[r] > longest ? a->ctx_lens[r] : longest;
    const int most = (longest + a->block_size * MIN_SPAN_BLOCKS - 1) / (a->block_size * MIN_SPAN_BLOCKS);
    return wanted < most ? wanted : most > 0 ? most : 1;
}

int decode_attention_bf16(const Args* a) {
    if (!a->is_bf16 || a->head_dim % 32 || a->num_q_heads * a->head_dim > MAX_HEADS_X_DIM) return -1;
    const int heads = a->num_q_heads, head_dim = a->head_dim, spans = spans_per_row(a);
    const int64_t tasks = (int64_t)a->num_rows * spans;
    float* accs = malloc(sizeof(float) * tasks * heads * (head_dim + 2));  // then maxes, then denoms
    if (!accs) return -1;
    float* maxes = accs + tasks * heads * head_dim;
    float* denoms = maxes + tasks * heads;
#pragma omp parallel for schedule(dynamic)
    for (int64_t task = 0; task < tasks; task++) {
        const int row = (int)(task / spans), span = (int)(task % spans), ctx = a->ctx_lens[row];
        const int block_first = first_key(a, ctx) / a->block_size, blocks = (ctx + a->block_size - 1) / a->block_size - block_first;
        attend_span(a, row, block_first + (int)((int64_t)blocks * span / spans),
                    block_first + (int)((int64_t)blocks * (span + 1) / spans), accs + task * heads * head_dim,
                    maxes + task * heads, denoms + task * heads);
    }
#pragma omp parallel for schedule(static) if (a->num_rows > 1)
    for (int row = 0; row < a->num_rows; row++) {
        const int64_t task = (int64_t)row * spans;
        merge_spans(a, row, spans, accs + task * heads * head_dim, maxes + task * heads, denoms + task * heads);
    }
    free(accs);
    return 0;
}
#else
int decode_attention_bf16(const Args* a) {
    (void)a;
    return -1;
}
#endif
