// Sampling without a vocabulary sort, and the repetition / presence / frequency penalties.
//
// Compile-time constant: SAMPLE_THREADS (threads per row, a multiple of 32).
//
// sample_tokens draws one token per row exactly as kernels/ref.py's `sample` specifies:
//   s = logits / temperature, w = exp(s - max s);
//   top-k keeps s >= the k-th largest s (ties at the threshold stay);
//   top-p keeps s >= the smallest value whose mass strictly above it (within the top-k set) is
//   below top_p of that set's mass; min-p keeps w >= min_p;
//   the token is the argmax of w / E over the kept tokens, E ~ Exp(1) from a counter-based hash
//   of (seed, offset, token id), so a row's draw never depends on the batch and needs no state.
// The two thresholds are found by radix selection on the order-preserving bit pattern of s:
// four passes of a 256-bin histogram each (counts for top-k, probability mass for top-p),
// instead of a sort. Reads of the vocabulary row: top-k + top-p with k <= MAX_CANDIDATES, 5
// (4 for top-k, which also find the max; 1 gathering the top-k set into shared memory, where
// top-p and the draw then run); top-p alone, 6 (max, 4, draw). One block per row; no host
// synchronisation.
#include "common.cuh"

#define NUM_SAMPLE_WARPS (SAMPLE_THREADS / 32)

// Unsigned keys whose order is the order of the floats.
FORGE_INLINE unsigned order_key(float x) {
  const unsigned u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

FORGE_INLINE float key_value(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// splitmix64 of (seed, offset): one independent stream per request step (ref.py's _mix_seed).
FORGE_INLINE unsigned long long mix_seed(long long seed, long long offset) {
  unsigned long long z = static_cast<unsigned long long>(seed) * 0x9E3779B97F4A7C15ull +
                         static_cast<unsigned long long>(offset) + 1ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFFull;
}

FORGE_INLINE unsigned mix32(unsigned x) {  // "lowbias32" integer hash
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// Exp(1) noise for token `index` under stream `key`: -log(U), U = (23 random bits + 0.5) / 2^23,
// which is exact in float32 and never 0 or 1.
FORGE_INLINE float exponential_noise(unsigned long long key, unsigned index) {
  unsigned h = mix32(index * 0x9E3779B9u + static_cast<unsigned>(key));
  h = mix32(h ^ static_cast<unsigned>(key >> 32));
  const float u = (static_cast<float>(h >> 9) + 0.5f) * 1.1920928955078125e-07f;
  return -logf(u);
}

struct Best {
  float value;
  int index;
};

FORGE_INLINE void keep_better(Best& best, float value, int index) {
  if (value > best.value || (value == best.value && index < best.index)) {
    best.value = value;
    best.index = index;
  }
}

FORGE_INLINE Best warp_best(Best b) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float value = __shfl_xor_sync(0xffffffffu, b.value, offset);
    const int index = __shfl_xor_sync(0xffffffffu, b.index, offset);
    keep_better(b, value, index);
  }
  return b;
}

#define MAX_CANDIDATES 1024  // a top-k set this small is copied to shared memory once

struct Scratch {  // shared memory of one row's block
  float values[NUM_SAMPLE_WARPS];
  int indices[NUM_SAMPLE_WARPS];
  unsigned hist_count[256];
  float hist_mass[256];
  unsigned prefix;
  int remaining;
  float above, target;
  int num_candidates;
  float candidate_value[MAX_CANDIDATES];
  int candidate_index[MAX_CANDIDATES];
};

// The tokens a selection walks over: a whole row of logits (s = logit / temperature, token = i),
// or the top-k candidates gathered into shared memory (s and token stored).
struct RowTokens {
  const float* logits;
  float temperature;
  int size;
  FORGE_INLINE float s(int i) const { return logits[i] / temperature; }
  FORGE_INLINE int token(int i) const { return i; }
};

struct CandidateTokens {
  const float* values;
  const int* tokens;
  int size;
  FORGE_INLINE float s(int i) const { return values[i]; }
  FORGE_INLINE int token(int i) const { return tokens[i]; }
};

// Every thread gets the block's best (value, lowest index on ties).
FORGE_INLINE Best block_best(Best b, Scratch& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  b = warp_best(b);
  if (lane == 0) {
    sh.values[warp] = b.value;
    sh.indices[warp] = b.index;
  }
  __syncthreads();
  if (warp == 0) {
    Best w = {FORGE_NEG_INF, 0x7fffffff};
    if (lane < NUM_SAMPLE_WARPS) w = {sh.values[lane], sh.indices[lane]};
    w = warp_best(w);
    if (lane == 0) {
      sh.values[0] = w.value;
      sh.indices[0] = w.index;
    }
  }
  __syncthreads();
  b = {sh.values[0], sh.indices[0]};
  __syncthreads();  // scratch may be reused
  return b;
}

FORGE_INLINE float block_max(float x, Scratch& sh) {
  const Best b = {x, 0};
  return block_best(b, sh).value;
}

// The k-th largest s of the row (1 <= k < size), by radix selection on order keys, one 8-bit
// digit per pass; the first pass also finds the row's largest s (`row_max`).
FORGE_INLINE float kth_largest(const RowTokens& row, int k, float& row_max, Scratch& sh) {
  unsigned prefix = 0, mask = 0;
  int remaining = k;  // rank of the wanted key among those matching `prefix`
  float local_max = FORGE_NEG_INF;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += SAMPLE_THREADS) sh.hist_count[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < row.size; i += SAMPLE_THREADS) {
      const float s = row.s(i);
      if (shift == 24) local_max = fmaxf(local_max, s);
      const unsigned key = order_key(s);
      if ((key & mask) == prefix) atomicAdd(&sh.hist_count[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, digit = 255;
      for (; digit > 0; --digit) {
        if (above + static_cast<int>(sh.hist_count[digit]) >= remaining) break;
        above += sh.hist_count[digit];
      }
      sh.prefix = prefix | (static_cast<unsigned>(digit) << shift);
      sh.remaining = remaining - above;
    }
    __syncthreads();
    prefix = sh.prefix;
    remaining = sh.remaining;
    mask |= 255u << shift;
  }
  row_max = block_max(local_max, sh);
  return key_value(prefix);
}

// The smallest s >= floor whose mass strictly above it (w = exp(s - row_max), over the tokens
// with s >= floor) is below top_p of those tokens' whole mass, found on the first pass.
template <typename Tokens>
FORGE_INLINE float mass_threshold(const Tokens& tokens, float floor, float row_max, float top_p, Scratch& sh) {
  unsigned prefix = 0, mask = 0;
  float above = 0.0f, target = 0.0f;  // mass of the kept keys greater than every key matching `prefix`
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += SAMPLE_THREADS) {
      sh.hist_count[b] = 0;
      sh.hist_mass[b] = 0.0f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < tokens.size; i += SAMPLE_THREADS) {
      const float s = tokens.s(i);
      const unsigned key = order_key(s);
      if (s >= floor && (key & mask) == prefix) {
        const unsigned digit = (key >> shift) & 255u;
        atomicAdd(&sh.hist_count[digit], 1u);
        atomicAdd(&sh.hist_mass[digit], expf(s - row_max));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (shift == 24) {  // the first pass saw every token of the set: its mass sets the target
        float total = 0.0f;
        for (int digit = 255; digit >= 0; --digit) total += sh.hist_mass[digit];
        sh.target = top_p * total;
      }
      target = sh.target;
      // The lowest non-empty digit whose mass above stays below target; the highest non-empty
      // digit always qualifies, since `above` < target holds for the prefix chosen so far.
      int chosen = -1;
      float chosen_above = above, mass = above;
      for (int digit = 255; digit >= 0; --digit) {
        if (sh.hist_count[digit] == 0) continue;
        if (chosen >= 0 && mass >= target) break;
        chosen = digit;
        chosen_above = mass;
        mass += sh.hist_mass[digit];
      }
      sh.prefix = prefix | (static_cast<unsigned>(chosen < 0 ? 0 : chosen) << shift);
      sh.above = chosen_above;
    }
    __syncthreads();
    prefix = sh.prefix;
    above = sh.above;
    mask |= 255u << shift;
  }
  return key_value(prefix);
}

// The kept token with the largest w / E (E: the row's exponential noise of that token).
template <typename Tokens>
FORGE_INLINE int draw(const Tokens& tokens, float floor, float row_max, float min_p, unsigned long long key,
                      Scratch& sh) {
  Best best = {FORGE_NEG_INF, 0x7fffffff};
  for (int i = threadIdx.x; i < tokens.size; i += SAMPLE_THREADS) {
    const float s = tokens.s(i);
    if (s < floor) continue;
    const float w = expf(s - row_max);
    if (w >= min_p) keep_better(best, w / exponential_noise(key, tokens.token(i)), tokens.token(i));
  }
  return block_best(best, sh).index;
}

// Top-p (if on) and the draw over `tokens`, all of whose s are >= k_floor.
template <typename Tokens>
FORGE_INLINE int draw_top_p(const Tokens& tokens, float k_floor, float row_max, float top_p, float min_p,
                            unsigned long long key, Scratch& sh) {
  const float p_floor = top_p < 1.0f ? mass_threshold(tokens, k_floor, row_max, top_p, sh) : FORGE_NEG_INF;
  return draw(tokens, fmaxf(k_floor, p_floor), row_max, min_p, key, sh);
}

// grid (num_rows), block SAMPLE_THREADS
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_tokens(
    const float* __restrict__ logits,       // [num_rows, vocab] contiguous
    const float* __restrict__ temperature,  // [num_rows]; 0 = greedy
    const long long* __restrict__ top_k,    // [num_rows]; <= 0 or >= vocab = off
    const float* __restrict__ top_p,        // [num_rows]; 1 = off
    const float* __restrict__ min_p,        // [num_rows]; 0 = off
    const long long* __restrict__ seeds, const long long* __restrict__ offsets,  // [num_rows]
    long long* __restrict__ out,            // [num_rows]
    int vocab) {
  __shared__ Scratch sh;
  const int r = blockIdx.x;
  const float temp = temperature[r];
  const RowTokens row = {logits + static_cast<long long>(r) * vocab, temp == 0.0f ? 1.0f : temp, vocab};
  if (temp == 0.0f) {  // greedy: argmax of the raw logits, lowest index on ties
    Best best = {FORGE_NEG_INF, 0x7fffffff};
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) keep_better(best, row.logits[i], i);
    best = block_best(best, sh);
    if (threadIdx.x == 0) out[r] = best.index;
    return;
  }
  const unsigned long long key = mix_seed(seeds[r], offsets[r]);
  const long long k = top_k[r];
  int token;
  if (k > 0 && k < vocab) {
    float row_max;
    const float k_floor = kth_largest(row, static_cast<int>(k), row_max, sh);
    // Gather the top-k set (ties at the threshold included) once; later passes read only it.
    if (threadIdx.x == 0) sh.num_candidates = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
      const float s = row.s(i);
      if (s >= k_floor) {
        const int slot = atomicAdd(&sh.num_candidates, 1);
        if (slot < MAX_CANDIDATES) {
          sh.candidate_value[slot] = s;
          sh.candidate_index[slot] = i;
        }
      }
    }
    __syncthreads();
    const int num_candidates = sh.num_candidates;
    if (num_candidates <= MAX_CANDIDATES) {
      const CandidateTokens candidates = {sh.candidate_value, sh.candidate_index, num_candidates};
      token = draw_top_p(candidates, k_floor, row_max, top_p[r], min_p[r], key, sh);
    } else {  // too many (a large k, or ties): walk the row
      token = draw_top_p(row, k_floor, row_max, top_p[r], min_p[r], key, sh);
    }
  } else {
    float local_max = FORGE_NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) local_max = fmaxf(local_max, row.s(i));
    token = draw_top_p(row, FORGE_NEG_INF, block_max(local_max, sh), top_p[r], min_p[r], key, sh);
  }
  if (threadIdx.x == 0) out[r] = token;
}

// grid (ceil(vocab / 256), num_rows), block 256. Rounded exactly as ref.py (no fused multiply-add).
extern "C" __global__ void apply_penalties(
    const float* __restrict__ logits,               // [num_rows, vocab]
    const unsigned char* __restrict__ prompt_mask,  // [num_rows, vocab] bool
    const int* __restrict__ output_counts,          // [num_rows, vocab]
    const float* __restrict__ repetition, const float* __restrict__ presence,
    const float* __restrict__ frequency,            // [num_rows] each
    float* __restrict__ out, int vocab) {           // [num_rows, vocab]
  const int i = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
  if (i >= vocab) return;
  const long long at = static_cast<long long>(r) * vocab + i;
  const int count = output_counts[at];
  float x = logits[at];
  if (prompt_mask[at] || count > 0) x = x > 0.0f ? x / repetition[r] : __fmul_rn(x, repetition[r]);
  x = __fsub_rn(x, __fmul_rn(frequency[r], static_cast<float>(count)));
  x = __fsub_rn(x, __fmul_rn(presence[r], count > 0 ? 1.0f : 0.0f));
  out[at] = x;
}

// Grammar masking: token i of row r keeps its logit when bit i % 32 of bitmask[r][i / 32] is set
// (llguidance's layout), else becomes -inf.
extern "C" __global__ void apply_token_bitmask(
    const float* __restrict__ logits,  // [num_rows, vocab]
    const int* __restrict__ bitmask,   // [num_rows, words], words = ceil(vocab / 32)
    float* __restrict__ out, int vocab, int words) {  // [num_rows, vocab]
  const int i = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
  if (i >= vocab) return;
  const long long at = static_cast<long long>(r) * vocab + i;
  const unsigned word = static_cast<unsigned>(bitmask[static_cast<long long>(r) * words + i / 32]);
  out[at] = (word >> (i % 32)) & 1u ? logits[at] : FORGE_NEG_INF;
}
