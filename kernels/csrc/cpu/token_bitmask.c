// Grammar masking (kernels/ref.py apply_token_bitmask): each token keeps its logit where its bit is
// set in the row's bitmask (bit t % 32 of word t / 32, llguidance's layout), else becomes -inf.
// One pass writing a new row, where the reference expands every bit to an int32 first.
#include <math.h>
#include <stdint.h>

#include "kernels.h"

void apply_token_bitmask(const float* logits, const int32_t* bitmask, float* out, int rows, int vocab, int words) {
    for (int r = 0; r < rows; r++) {
        const float* in = logits + (int64_t)r * vocab;
        float* row = out + (int64_t)r * vocab;
        const uint32_t* bits = (const uint32_t*)(bitmask + (int64_t)r * words);
        for (int w = 0; w < words; w++) {
            const uint32_t word = bits[w];
            const int base = w * 32, end = base + 32 < vocab ? base + 32 : vocab;
            for (int t = base; t < end; t++) row[t] = (word >> (t - base)) & 1u ? in[t] : -INFINITY;
        }
    }
}
