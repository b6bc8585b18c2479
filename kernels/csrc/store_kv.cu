// KV-cache write: each token of the flat batch copies its keys and values into its cache slot.
// Layout (kernels/contract.py): cache [num_blocks, block_size, num_kv_heads, head_dim], slot =
// block * block_size + offset. A negative slot marks a padding token (CUDA-graph buckets): skipped.
// dtype-agnostic: a token's row is moved as 16-byte words (the loader checks the alignment).
#include "common.cuh"

extern "C" __global__ void store_kv(
    const char* __restrict__ key,          // [num_tokens, num_kv_heads, head_dim], rows key_row_stride bytes apart
    const char* __restrict__ value,        // same shape, rows value_row_stride bytes apart
    char* __restrict__ k_cache,            // [num_slots, row_bytes]
    char* __restrict__ v_cache,
    const long long* __restrict__ slot_mapping,  // [num_tokens]
    long long key_row_stride, long long value_row_stride, int row_bytes) {
  const long long slot = slot_mapping[blockIdx.x];
  if (slot < 0) return;
  const int words = row_bytes / 16;
  const uint4* k_src = reinterpret_cast<const uint4*>(key + blockIdx.x * key_row_stride);
  const uint4* v_src = reinterpret_cast<const uint4*>(value + blockIdx.x * value_row_stride);
  uint4* k_dst = reinterpret_cast<uint4*>(k_cache + slot * row_bytes);
  uint4* v_dst = reinterpret_cast<uint4*>(v_cache + slot * row_bytes);
  for (int i = threadIdx.x; i < words; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}
