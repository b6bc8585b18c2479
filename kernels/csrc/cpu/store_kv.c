// Each token's key and value rows copied into their cache slot (kernels/contract.py layout); a
// negative slot (padding) writes nothing. One call where the reference runs a check, a mask, a
// host sync and two index copies per layer. Rows may be strided (views into the fused qkv output);
// each token's heads are dense.
#include <stdint.h>
#include <string.h>

#include "kernels.h"

// Returns 0, or -1 (and writes nothing) when a slot lies past the cache's num_slots.
int store_kv(const char* key, int64_t key_row_bytes, const char* value, int64_t value_row_bytes, char* k_cache,
             char* v_cache, const int64_t* slots, int num_tokens, int64_t slot_bytes, int64_t num_slots) {
    for (int t = 0; t < num_tokens; t++)
        if (slots[t] >= num_slots) return -1;
    for (int t = 0; t < num_tokens; t++) {
        const int64_t slot = slots[t];
        if (slot < 0) continue;
        memcpy(k_cache + slot * slot_bytes, key + t * key_row_bytes, (size_t)slot_bytes);
        memcpy(v_cache + slot * slot_bytes, value + t * value_row_bytes, (size_t)slot_bytes);
    }
    return 0;
}
