// Scalar types, conversions and warp reductions shared by Forge's kernels.
//
// No CUDA headers are included: the 16-bit types are plain structs converted with PTX (on the
// device) or bit arithmetic, so the sources build with bare NVRTC, with nvcc, and with a host
// C++ compiler under tests/kernels/emulator (which defines FORGE_EMULATOR and the CUDA built-ins).
#pragma once

#ifndef FORGE_EMULATOR
#define FORGE_INLINE __device__ __forceinline__
#endif

#define FORGE_NEG_INF (-__int_as_float(0x7f800000))

struct f16 { unsigned short bits; };
struct bf16 { unsigned short bits; };

FORGE_INLINE float to_float(float x) { return x; }

FORGE_INLINE float to_float(bf16 x) { return __uint_as_float(static_cast<unsigned>(x.bits) << 16); }

FORGE_INLINE float to_float(f16 x) {
#ifdef __CUDA_ARCH__
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
#else  // IEEE binary16 -> binary32, exact (the emulator's path)
  const unsigned sign = (x.bits & 0x8000u) << 16, exponent = (x.bits >> 10) & 0x1fu, mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;  // subnormal: m * 2^-24
  return sign ? -magnitude : magnitude;
#endif
}

template <typename T> FORGE_INLINE T from_float(float x);

template <> FORGE_INLINE float from_float<float>(float x) { return x; }

template <> FORGE_INLINE bf16 from_float<bf16>(float x) {  // round to nearest even, as torch does
  unsigned u = __float_as_uint(x);
  bf16 out;
  if ((u & 0x7fffffffu) > 0x7f800000u) { out.bits = 0x7fc0; return out; }  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  out.bits = static_cast<unsigned short>(u >> 16);
  return out;
}

template <> FORGE_INLINE f16 from_float<f16>(float x) {
  f16 out;
#ifdef __CUDA_ARCH__
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(x));
#else  // binary32 -> binary16, round to nearest even (the emulator's path)
  const unsigned u = __float_as_uint(x), sign = (u >> 16) & 0x8000u;
  const unsigned magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) { out.bits = static_cast<unsigned short>(sign | 0x7e00u); return out; }
  if (magnitude >= 0x477ff000u) { out.bits = static_cast<unsigned short>(sign | 0x7c00u); return out; }  // inf
  if (magnitude < 0x38800000u) {  // subnormal or zero in half: scale by 2^24 and round
    const float scaled = __uint_as_float(magnitude) * 16777216.0f;
    out.bits = static_cast<unsigned short>(sign | static_cast<unsigned>(__float2uint_rn(scaled)));
    return out;
  }
  unsigned rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  out.bits = static_cast<unsigned short>(sign | ((rounded - 0x38000000u) >> 13));
#endif
  return out;
}

// Unpack 16 bytes (one aligned vector load) of T into floats: 4 floats or 8 16-bit values.
template <typename T> struct Chunk { static constexpr int size = 16 / sizeof(T); };

template <typename T> FORGE_INLINE void unpack_chunk(const T* src, float* dst) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const T* values = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < Chunk<T>::size; ++i) dst[i] = to_float(values[i]);
}

FORGE_INLINE float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

FORGE_INLINE float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

FORGE_INLINE int ceil_div(int a, int b) { return (a + b - 1) / b; }
