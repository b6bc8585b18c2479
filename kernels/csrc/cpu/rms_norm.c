// RMSNorm of each token row, with the residual add before it fused in: one pass where the
// reference runs about ten torch ops. Rounding follows the reference (kernels/ref.py rms_norm,
// transformers' LlamaRMSNorm) step by step: the sum x + residual is rounded to the element type,
// the row is normalized in float32, rounded, then multiplied by the weight and rounded again.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"

static inline float bf16_round(float f) { return bf16_to_float(bf16_from_float(f)); }

static inline float load(const void* base, int64_t i, int is_bf16) {
    return is_bf16 ? bf16_to_float(((const uint16_t*)base)[i]) : ((const float*)base)[i];
}

static inline void store(void* base, int64_t i, float f, int is_bf16) {  // f already rounded
    if (is_bf16) {
        uint32_t bits;
        memcpy(&bits, &f, 4);
        ((uint16_t*)base)[i] = (uint16_t)(bits >> 16);
    } else {
        ((float*)base)[i] = f;
    }
}

// x, residual_in, out, residual_out: [num_tokens, hidden] dense; weight [hidden]. With residual_in
// (may be NULL): residual_out = x + residual_in, then out = norm(residual_out); without: out = norm(x).
void rms_norm(const void* x, const void* residual_in, const void* weight, void* out, void* residual_out,
              int num_tokens, int hidden, float eps, int is_bf16) {
#pragma omp parallel for schedule(static) if (num_tokens > 4)
    for (int token = 0; token < num_tokens; token++) {
        const int64_t row = (int64_t)token * hidden;
        float h[hidden];
        float sum_squares = 0.0f;
        for (int i = 0; i < hidden; i++) {
            float v = load(x, row + i, is_bf16);
            if (residual_in) {
                v += load(residual_in, row + i, is_bf16);
                v = is_bf16 ? bf16_round(v) : v;
                store(residual_out, row + i, v, is_bf16);
            }
            h[i] = v;
            sum_squares += v * v;
        }
        const float inv_rms = 1.0f / sqrtf(sum_squares / (float)hidden + eps);
        for (int i = 0; i < hidden; i++) {
            float normed = h[i] * inv_rms;
            normed = is_bf16 ? bf16_round(normed) : normed;
            const float scaled = load(weight, i, is_bf16) * normed;
            store(out, row + i, is_bf16 ? bf16_round(scaled) : scaled, is_bf16);
        }
    }
}
