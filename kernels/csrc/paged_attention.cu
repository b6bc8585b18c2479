// Paged attention over a mixed batch (decode rows and prefill chunks), split along the context.
//
// Compile-time constants: SCALAR (float | f16 | bf16), HEAD_DIM (a multiple of 32), BLOCK_SIZE
// (tokens per cache page, dividing 32), NUM_WARPS (per block), ROWS_PER_WARP (query rows a warp
// owns; kernels/sources.py picks it so that the static shared memory stays under 48 KiB).
//
// Work split. The plan cuts every sequence's query rows into tiles of at most TILE_TOKENS tokens.
// One thread block owns (tile, kv head, row chunk, partition): the query rows of that tile whose
// heads share that kv head (grouped-query attention: K/V are read once for the whole group), and
// one partition of the context, `partition_size` keys. Long contexts therefore spread over many
// blocks (flash-decoding), so a batch of one with a 32k context still fills the GPU. Each block
// streams its keys through shared memory 32 at a time (one key per lane for the scores, a lane
// per HEAD_DIM/32 output dims for the values) with an online softmax per query row.
//
// Output. When a tile's context fits one partition the block writes the normalised result; else
// it writes its unnormalised partial sum, running max and softmax denominator, and
// merge_attention_partitions combines the partitions (log-sum-exp weighting).
#include "common.cuh"

#define NUM_THREADS (NUM_WARPS * 32)
#define MAX_ROWS (NUM_WARPS * ROWS_PER_WARP)  // query rows (tokens x heads of a group) per block
#define KEYS_PER_ITER 32                       // one key per lane
#define DIMS_PER_LANE (HEAD_DIM / 32)
#define CHUNK (16 / (int)sizeof(SCALAR))       // elements per 16-byte load
#define KV_ROW (HEAD_DIM + CHUNK)              // padded shared-memory row: 32 lanes reading 32
                                               // different keys hit different banks

struct TileInfo {
  int seq, q_start, q_len;  // sequence, its first flat query row in this tile, rows in the tile
  int first_pos;            // absolute position of the tile's first query token
  int key_end;              // the keys the tile sees end here (its last query's position + 1)
  int num_parts;            // partitions that cover [0, key_end)
};

FORGE_INLINE TileInfo load_tile(const int* tiles, int tile, const int* seq_lens, const int* query_start_loc,
                                int partition_size) {
  TileInfo t;
  t.seq = tiles[3 * tile];
  t.q_start = tiles[3 * tile + 1];
  t.q_len = tiles[3 * tile + 2];
  const int seq_start = query_start_loc[t.seq];
  const int seq_q_len = query_start_loc[t.seq + 1] - seq_start;
  t.first_pos = seq_lens[t.seq] - seq_q_len + (t.q_start - seq_start);
  t.key_end = t.first_pos + t.q_len;
  t.num_parts = ceil_div(t.key_end, partition_size);
  return t;
}

// grid (num_tiles, num_kv_heads * row_chunks, max_parts), block NUM_THREADS
extern "C" __global__ void __launch_bounds__(NUM_THREADS) paged_attention(
    const SCALAR* __restrict__ query,         // [num_tokens, num_q_heads, HEAD_DIM], rows query_row_stride apart
    const SCALAR* __restrict__ k_cache,       // [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
    const SCALAR* __restrict__ v_cache,
    SCALAR* __restrict__ out,                 // [num_tokens, num_q_heads, HEAD_DIM]
    float* __restrict__ partial_out,          // [num_tokens, num_q_heads, max_parts, HEAD_DIM]
    float* __restrict__ partial_max,          // [num_tokens, num_q_heads, max_parts]
    float* __restrict__ partial_sum,          // [num_tokens, num_q_heads, max_parts]
    const int* __restrict__ block_tables,     // [num_seqs, block_table_stride]
    const int* __restrict__ seq_lens,         // [num_seqs]
    const int* __restrict__ query_start_loc,  // [num_seqs + 1]
    const int* __restrict__ tiles,            // [num_tiles, 3]: seq, first flat row, rows
    long long query_row_stride, int block_table_stride, int num_q_heads, int num_kv_heads, int row_chunks,
    float scale, int sliding_window, int partition_size, int max_parts) {
  __shared__ float q_s[MAX_ROWS][HEAD_DIM];           // this block's query rows, pre-scaled
  __shared__ __align__(16) SCALAR k_s[KEYS_PER_ITER][KV_ROW];
  __shared__ __align__(16) SCALAR v_s[KEYS_PER_ITER][KV_ROW];
  __shared__ float p_s[NUM_WARPS][KEYS_PER_ITER];     // each warp's softmax weights of the 32 keys

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_head = blockIdx.y / row_chunks, chunk = blockIdx.y % row_chunks, part = blockIdx.z;
  const int group = num_q_heads / num_kv_heads;
  const TileInfo t = load_tile(tiles, blockIdx.x, seq_lens, query_start_loc, partition_size);
  const int row_begin = chunk * MAX_ROWS;
  const int num_rows = min(t.q_len * group - row_begin, MAX_ROWS);  // row r: token r / group, head r % group
  if (part >= t.num_parts || num_rows <= 0) return;  // uniform over the block

  int key_begin = part * partition_size;
  const int key_end = min(key_begin + partition_size, t.key_end);
  if (sliding_window > 0) key_begin = max(key_begin, t.first_pos - sliding_window + 1);

  for (int i = threadIdx.x; i < num_rows * HEAD_DIM; i += NUM_THREADS) {
    const int r = row_begin + i / HEAD_DIM, d = i % HEAD_DIM;
    const long long token = t.q_start + r / group;
    const int head = kv_head * group + r % group;
    q_s[i / HEAD_DIM][d] = to_float(query[token * query_row_stride + head * HEAD_DIM + d]) * scale;
  }

  float row_max[ROWS_PER_WARP], row_sum[ROWS_PER_WARP], acc[ROWS_PER_WARP][DIMS_PER_LANE];
#pragma unroll
  for (int i = 0; i < ROWS_PER_WARP; ++i) {
    row_max[i] = FORGE_NEG_INF;
    row_sum[i] = 0.0f;
#pragma unroll
    for (int d = 0; d < DIMS_PER_LANE; ++d) acc[i][d] = 0.0f;
  }

  const int* table = block_tables + static_cast<long long>(t.seq) * block_table_stride;
  constexpr int chunks_per_key = HEAD_DIM / CHUNK;
  for (int base = key_begin - key_begin % KEYS_PER_ITER; base < key_end; base += KEYS_PER_ITER) {
    __syncthreads();  // the previous keys (and, first time round, q_s) are no longer being read
    for (int c = threadIdx.x; c < KEYS_PER_ITER * chunks_per_key; c += NUM_THREADS) {
      const int key = c / chunks_per_key, col = (c % chunks_per_key) * CHUNK, pos = base + key;
      uint4 k_word = make_uint4(0, 0, 0, 0), v_word = make_uint4(0, 0, 0, 0);  // masked keys read as 0
      if (pos >= key_begin && pos < key_end) {
        const long long page = table[pos / BLOCK_SIZE];
        const long long offset = ((page * BLOCK_SIZE + pos % BLOCK_SIZE) * num_kv_heads + kv_head) * HEAD_DIM + col;
        k_word = *reinterpret_cast<const uint4*>(k_cache + offset);
        v_word = *reinterpret_cast<const uint4*>(v_cache + offset);
      }
      *reinterpret_cast<uint4*>(&k_s[key][col]) = k_word;
      *reinterpret_cast<uint4*>(&v_s[key][col]) = v_word;
    }
    __syncthreads();

    const int pos = base + lane;  // this lane's key
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; ++i) {
      const int r = warp + i * NUM_WARPS;
      if (r >= num_rows) break;  // uniform over the warp
      const int q_pos = t.first_pos + (row_begin + r) / group;
      const bool visible = pos >= key_begin && pos < key_end && pos <= q_pos &&
                           (sliding_window <= 0 || pos > q_pos - sliding_window);
      float score = FORGE_NEG_INF;
      if (visible) {
        score = 0.0f;
#pragma unroll
        for (int col = 0; col < HEAD_DIM; col += CHUNK) {
          float k[CHUNK];
          unpack_chunk(&k_s[lane][col], k);
#pragma unroll
          for (int e = 0; e < CHUNK; ++e) score += q_s[r][col + e] * k[e];
        }
      }
      const float new_max = fmaxf(row_max[i], warp_max(score));
      const float p = visible ? __expf(score - new_max) : 0.0f;
      const float rescale = row_max[i] == FORGE_NEG_INF ? 0.0f : __expf(row_max[i] - new_max);
      row_sum[i] = row_sum[i] * rescale + warp_sum(p);
      row_max[i] = new_max;
      p_s[warp][lane] = p;
      __syncwarp();
#pragma unroll
      for (int d = 0; d < DIMS_PER_LANE; ++d) acc[i][d] *= rescale;
      for (int j = 0; j < KEYS_PER_ITER; ++j) {
        const float pj = p_s[warp][j];
#pragma unroll
        for (int d = 0; d < DIMS_PER_LANE; ++d) acc[i][d] += pj * to_float(v_s[j][lane * DIMS_PER_LANE + d]);
      }
      __syncwarp();  // p_s is rewritten by the next row
    }
  }

#pragma unroll
  for (int i = 0; i < ROWS_PER_WARP; ++i) {
    const int r = warp + i * NUM_WARPS;
    if (r >= num_rows) break;
    const long long token = t.q_start + (row_begin + r) / group;
    const int head = kv_head * group + (row_begin + r) % group;
    const long long row = token * num_q_heads + head;
    if (t.num_parts == 1) {
      const float inv = row_sum[i] > 0.0f ? 1.0f / row_sum[i] : 0.0f;
#pragma unroll
      for (int d = 0; d < DIMS_PER_LANE; ++d)
        out[row * HEAD_DIM + lane * DIMS_PER_LANE + d] = from_float<SCALAR>(acc[i][d] * inv);
    } else {
      const long long slot = row * max_parts + part;
#pragma unroll
      for (int d = 0; d < DIMS_PER_LANE; ++d) partial_out[slot * HEAD_DIM + lane * DIMS_PER_LANE + d] = acc[i][d];
      if (lane == 0) {
        partial_max[slot] = row_max[i];
        partial_sum[slot] = row_sum[i];
      }
    }
  }
}

// grid (num_tiles, num_q_heads), block HEAD_DIM threads (one per output dim). Tiles whose context
// fits one partition were finished by paged_attention and are skipped.
extern "C" __global__ void merge_attention_partitions(
    SCALAR* __restrict__ out, const float* __restrict__ partial_out, const float* __restrict__ partial_max,
    const float* __restrict__ partial_sum, const int* __restrict__ seq_lens,
    const int* __restrict__ query_start_loc, const int* __restrict__ tiles, int num_q_heads,
    int partition_size, int max_parts) {
  const TileInfo t = load_tile(tiles, blockIdx.x, seq_lens, query_start_loc, partition_size);
  if (t.num_parts == 1) return;
  const int head = blockIdx.y, d = threadIdx.x;
  for (int q = 0; q < t.q_len; ++q) {
    const long long row = static_cast<long long>(t.q_start + q) * num_q_heads + head;
    const float* maxes = partial_max + row * max_parts;
    const float* sums = partial_sum + row * max_parts;
    float global_max = FORGE_NEG_INF;
    for (int z = 0; z < t.num_parts; ++z)
      if (sums[z] > 0.0f) global_max = fmaxf(global_max, maxes[z]);
    float total = 0.0f, value = 0.0f;
    for (int z = 0; z < t.num_parts; ++z) {
      if (sums[z] > 0.0f) {
        const float weight = __expf(maxes[z] - global_max);
        total += sums[z] * weight;
        value += partial_out[(row * max_parts + z) * HEAD_DIM + d] * weight;
      }
    }
    out[row * HEAD_DIM + d] = from_float<SCALAR>(total > 0.0f ? value / total : 0.0f);
  }
}
