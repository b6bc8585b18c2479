// Every decoder layer of a Llama-family model for a step of decode rows, in one call: RMSNorm with
// the residual add, the 4-bit qkv projection, rotary, the KV write, paged attention, the output
// projection, RMSNorm, gate/up, SwiGLU and down, layer after layer, with no trip back to Python.
// It strings together the library's own kernels (kernels.h), which the unfused path calls one by
// one from torch (engine/model/llama.py): the same arithmetic, without ~15 Python-level ops a layer at
// 10-40 us each. Rotary and SwiGLU round each product and sum to bfloat16 as the torch ops do.
#include <math.h>
#include <stdlib.h>

#include "bf16.h"
#include "kernels.h"

// One layer's row of the table: addresses of its tensors (int4_matmul's packing for the 4-bit
// projections; a bias address may be 0).
enum {
    INPUT_NORM, POST_NORM, QKV_CODES, QKV_PARAMS, QKV_BIAS, O_CODES, O_PARAMS, O_BIAS, GATE_UP_CODES,
    GATE_UP_PARAMS, DOWN_CODES, DOWN_PARAMS, K_CACHE, V_CACHE, LAYER_FIELDS
};
// The model's shape, an int32 array.
enum { HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, BLOCK_SIZE, WINDOW, SHAPE_FIELDS };
enum { MAX_ROTARY_DIM = 512 };

#define FIELD(row, name) ((void*)(intptr_t)(row)[name])

// x [rows, heads, head_dim] (row stride `stride`) rotated in place: x * cos + rotate_half(x) * sin,
// cos and sin [rows, head_dim]; each product and the sum rounded to bfloat16.
static void rotate(uint16_t* x, int64_t stride, int rows, int heads, int head_dim, const uint16_t* cos,
                   const uint16_t* sin) {
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (rows > 4)
    for (int r = 0; r < rows; r++) {
        const uint16_t *c = cos + (int64_t)r * head_dim, *s = sin + (int64_t)r * head_dim;
        for (int h = 0; h < heads; h++) {
            uint16_t* p = x + r * stride + (int64_t)h * head_dim;
            float in[MAX_ROTARY_DIM];
            for (int i = 0; i < head_dim; i++) in[i] = bf16_to_float(p[i]);
            for (int i = 0; i < head_dim; i++) {
                const float rotated = i < half ? -in[i + half] : in[i - half];
                const float a = bf16_to_float(bf16_from_float(in[i] * bf16_to_float(c[i])));
                const float b = bf16_to_float(bf16_from_float(rotated * bf16_to_float(s[i])));
                p[i] = bf16_from_float(a + b);
            }
        }
    }
}

// act [rows, size] = silu(gate) * up, gate_up [rows, 2 * size]: silu in float32 rounded, then the product rounded.
static void silu_mul(const uint16_t* gate_up, int rows, int size, uint16_t* act) {
#pragma omp parallel for schedule(static) if (rows > 4)
    for (int r = 0; r < rows; r++) {
        const uint16_t* gate = gate_up + (int64_t)r * 2 * size;
        for (int i = 0; i < size; i++) {
            const float g = bf16_to_float(gate[i]);
            const float silu = bf16_to_float(bf16_from_float(g / (1.0f + expf(-g))));
            act[(int64_t)r * size + i] = bf16_from_float(silu * bf16_to_float(gate[size + i]));
        }
    }
}

// x [rows, hidden]: in, the embeddings; out, the last layer's MLP output. residual [rows, hidden]:
// out, the residual stream before it (the model's final norm adds the two). cos, sin [rows,
// head_dim]; slots [rows] int64 cache slots; q_rows [rows] int64 (0..rows-1, attention's row order);
// block_tables [rows, table_stride] int32; ctx_lens [rows] int32. Returns 0; -1 for a shape the
// kernels do not take; -2 when a buffer could not be allocated; -3 for a slot past the cache.
int decoder_forward(const int64_t* layers, int num_layers, const int32_t* shape, float eps, float scale,
                    int64_t num_slots, int rows, uint16_t* x, uint16_t* residual, const uint16_t* cos,
                    const uint16_t* sin, const int64_t* slots, const int64_t* q_rows, const int32_t* block_tables,
                    int64_t table_stride, const int32_t* ctx_lens) {
    const int hidden = shape[HIDDEN], heads = shape[HEADS], kv_heads = shape[KV_HEADS], head_dim = shape[HEAD_DIM];
    const int inter = shape[INTERMEDIATE], q_size = heads * head_dim, kv_size = kv_heads * head_dim;
    const int qkv_size = q_size + 2 * kv_size;
    if (head_dim > MAX_ROTARY_DIM || head_dim % 2) return -1;
    const int64_t floats = (int64_t)rows * (hidden + qkv_size + q_size + 3 * inter);
    uint16_t* buffer = malloc((size_t)floats * sizeof(uint16_t));
    if (!buffer) return -2;
    uint16_t *h = buffer, *qkv = h + (int64_t)rows * hidden, *attn = qkv + (int64_t)rows * qkv_size;
    uint16_t *gate_up = attn + (int64_t)rows * q_size, *act = gate_up + (int64_t)rows * 2 * inter;
    int status = 0;
    for (int l = 0; l < num_layers && status == 0; l++) {
        const int64_t* w = layers + (int64_t)l * LAYER_FIELDS;
        rms_norm(x, l ? residual : NULL, FIELD(w, INPUT_NORM), h, residual, rows, hidden, eps, 1);
        if (l == 0) memcpy(residual, x, (size_t)rows * hidden * sizeof(uint16_t));
        status = int4_matmul(h, hidden, rows, hidden, FIELD(w, QKV_CODES), FIELD(w, QKV_PARAMS), FIELD(w, QKV_BIAS),
                             qkv_size, qkv, qkv_size);
        if (status) break;
        rotate(qkv, qkv_size, rows, heads + kv_heads, head_dim, cos, sin);
        if (store_kv((const char*)(qkv + q_size), qkv_size * 2, (const char*)(qkv + q_size + kv_size), qkv_size * 2,
                     FIELD(w, K_CACHE), FIELD(w, V_CACHE), slots, rows, kv_size * 2, num_slots)) {
            status = -3;
            break;
        }
        status = decode_attention(qkv, qkv_size, q_rows, FIELD(w, K_CACHE), FIELD(w, V_CACHE), block_tables,
                                  table_stride, ctx_lens, rows, heads, kv_heads, head_dim, shape[BLOCK_SIZE],
                                  shape[WINDOW], scale, attn, q_size, 1);
        if (status) break;
        status = int4_matmul(attn, q_size, rows, q_size, FIELD(w, O_CODES), FIELD(w, O_PARAMS), FIELD(w, O_BIAS),
                             hidden, x, hidden);
        if (status) break;
        rms_norm(x, residual, FIELD(w, POST_NORM), h, residual, rows, hidden, eps, 1);
        status = int4_matmul(h, hidden, rows, hidden, FIELD(w, GATE_UP_CODES), FIELD(w, GATE_UP_PARAMS), NULL,
                             2 * inter, gate_up, 2 * inter);
        if (status) break;
        silu_mul(gate_up, rows, inter, act);
        status = int4_matmul(act, inter, rows, inter, FIELD(w, DOWN_CODES), FIELD(w, DOWN_PARAMS), NULL, hidden, x,
                             hidden);
    }
    free(buffer);
    return status;
}
