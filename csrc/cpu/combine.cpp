// combine forward and alpha gradient on byte-plane banks (see combine.h).
//
// Forward. A byte of plane g holds 8 mask bits, so its contribution
// sum_b alpha[8g+b] bit_b(byte) is a table lookup. A 256-entry table per plane
// would need a gather; instead each byte is split into two nibbles whose 16-entry
// tables (lo: masks 8g..8g+3, hi: 8g+4..8g+7) live in two ymm registers each, and
// vpermps + vblendvps look up 8 weights at once with no memory access at all.
// The portable loop uses the 256-entry table T[byte] = lo[byte & 15] + hi[byte >> 4],
// which is the same fp32 sum in the same order, so both ISAs give identical bits.
// Work is split into fixed blocks of the weight axis; a block's fp32 accumulator
// (8 KB) stays in L1 while the G planes stream past it, and every weight is
// computed by one thread in one fixed order: results do not depend on threads.
//
// Alpha gradient. grad_alpha[8g+b] = sum_j u_j bit_b(bank[g, j]) with u = grad * W.
// Measured on the 2-core AVX2 EPYC of DESIGN section 5 (n = 4M, K = 256, see
// benchmarks/kernels.py): a per-plane 256-bin weighted histogram is limited by
// store-to-load forwarding (masks of density 0.1 make byte 0 about 43% of all
// bytes, so consecutive increments hit the same bin); the AVX2 loop instead keeps
// 8 accumulators per plane in registers and adds u masked by each bit (bit b moved
// to the sign bit, vblendvps), 8 lanes at a time, with no memory dependence.
// The histogram stays as the portable loop (it needs no SIMD to be decent).
// Partial sums: fp32 within a block of 4096 weights (512 terms per lane), fp64
// across blocks, reduced in block order (deterministic for any thread count).
#include "cpu/combine.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace impresslearn::cpu {
namespace {

constexpr int64_t kFwdBlock = 2048;   // fp32 accumulator of 8 KB: L1-resident
constexpr int64_t kGradBlock = 4096;  // u = grad * W of 16 KB: L1-resident

struct alignas(32) NibbleTables {
  float lo[16];  // lo[v] = sum_{b<4} alpha[8g+b]   * bit_b(v)
  float hi[16];  // hi[v] = sum_{b<4} alpha[8g+4+b] * bit_b(v)
};

std::vector<NibbleTables> nibble_tables(const float* alpha, int64_t num_masks, int64_t planes) {
  std::vector<NibbleTables> tables(planes);
  for (int64_t g = 0; g < planes; ++g) {
    for (int half = 0; half < 2; ++half) {
      float* t = half == 0 ? tables[g].lo : tables[g].hi;
      for (int v = 0; v < 16; ++v) {
        float s = 0.0f;
        for (int b = 0; b < 4; ++b) {
          const int64_t k = 8 * g + 4 * half + b;
          if (((v >> b) & 1) && k < num_masks) s += alpha[k];
        }
        t[v] = s;
      }
    }
  }
  return tables;
}

void accumulate_planes_portable(const uint8_t* bank, int64_t n, int64_t planes, const float* table256, int64_t j0,
                                int64_t len, float* acc) {
  for (int64_t g = 0; g < planes; ++g) {
    const float* t = table256 + 256 * g;
    const uint8_t* p = bank + g * n + j0;
    for (int64_t j = 0; j < len; ++j) acc[j] += t[p[j]];
  }
}

__attribute__((target("avx2,fma"))) void accumulate_planes_avx2(const uint8_t* bank, int64_t n, int64_t planes,
                                                                 const NibbleTables* tables, int64_t j0, int64_t len,
                                                                 float* acc) {
  for (int64_t g = 0; g < planes; ++g) {
    const NibbleTables& tg = tables[g];
    const __m256 lo0 = _mm256_load_ps(tg.lo), lo1 = _mm256_load_ps(tg.lo + 8);
    const __m256 hi0 = _mm256_load_ps(tg.hi), hi1 = _mm256_load_ps(tg.hi + 8);
    const uint8_t* p = bank + g * n + j0;
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
      const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + j)));
      // vpermps reads index bits 0-2; bit 3 (lo) or bit 7 (hi) picks the table half
      // through the sign bit that vblendvps tests.
      const __m256 l = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo0, x), _mm256_permutevar8x32_ps(lo1, x),
                                        _mm256_castsi256_ps(_mm256_slli_epi32(x, 28)));
      const __m256i xh = _mm256_srli_epi32(x, 4);
      const __m256 h = _mm256_blendv_ps(_mm256_permutevar8x32_ps(hi0, xh), _mm256_permutevar8x32_ps(hi1, xh),
                                        _mm256_castsi256_ps(_mm256_slli_epi32(x, 24)));
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), _mm256_add_ps(l, h)));
    }
    for (; j < len; ++j) acc[j] += tg.lo[p[j] & 15] + tg.hi[p[j] >> 4];
  }
}

template <Dtype D>
void scale_by_weight(const void* weight, int64_t j0, int64_t len, const float* acc, void* out) {
  using T = typename Element<D>::type;
  const T* w = static_cast<const T*>(weight) + j0;
  T* o = static_cast<T*>(out) + j0;
  for (int64_t j = 0; j < len; ++j) o[j] = Element<D>::store(Element<D>::load(w[j]) * acc[j]);
}

template <Dtype D>
void load_as_float(const void* src, int64_t j0, int64_t len, float* dst) {
  using T = typename Element<D>::type;
  const T* s = static_cast<const T*>(src) + j0;
  for (int64_t j = 0; j < len; ++j) dst[j] = Element<D>::load(s[j]);
}

void load_as_float(const void* src, Dtype dtype, int64_t j0, int64_t len, float* dst) {
  switch (dtype) {
    case Dtype::f32: return load_as_float<Dtype::f32>(src, j0, len, dst);
    case Dtype::f16: return load_as_float<Dtype::f16>(src, j0, len, dst);
    case Dtype::bf16: return load_as_float<Dtype::bf16>(src, j0, len, dst);
  }
}

// sums[b] = sum_j u[j] bit_b(p[j]): a 256-bin weighted histogram, then each bit's
// sum over the bins that have it set.
void plane_bit_sums_portable(const uint8_t* p, const float* u, int64_t len, double* sums) {
  float hist[256];
  std::memset(hist, 0, sizeof(hist));
  for (int64_t j = 0; j < len; ++j) hist[p[j]] += u[j];
  for (int b = 0; b < 8; ++b) {
    double s = 0.0;
    for (int v = 0; v < 256; ++v)
      if ((v >> b) & 1) s += hist[v];
    sums[b] = s;
  }
}

__attribute__((target("avx2,fma"))) void plane_bit_sums_avx2(const uint8_t* p, const float* u, int64_t len,
                                                              double* sums) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  const __m256 zero = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + j)));
    const __m256 uv = _mm256_loadu_ps(u + j);
    acc[0] = _mm256_add_ps(acc[0], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 31))));
    acc[1] = _mm256_add_ps(acc[1], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 30))));
    acc[2] = _mm256_add_ps(acc[2], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 29))));
    acc[3] = _mm256_add_ps(acc[3], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 28))));
    acc[4] = _mm256_add_ps(acc[4], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 27))));
    acc[5] = _mm256_add_ps(acc[5], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 26))));
    acc[6] = _mm256_add_ps(acc[6], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 25))));
    acc[7] = _mm256_add_ps(acc[7], _mm256_blendv_ps(zero, uv, _mm256_castsi256_ps(_mm256_slli_epi32(x, 24))));
  }
  alignas(32) float lanes[8];
  for (int b = 0; b < 8; ++b) {
    _mm256_store_ps(lanes, acc[b]);
    double s = 0.0;
    for (float v : lanes) s += v;
    for (int64_t i = j; i < len; ++i)
      if ((p[i] >> b) & 1) s += u[i];
    sums[b] = s;
  }
}

}  // namespace

void combine_masks(const void* weight, Dtype dtype, const uint8_t* bank, const float* alpha, int64_t num_masks,
                   int64_t n, void* out, int num_threads, Isa isa) {
  const int64_t planes = (num_masks + 7) / 8;
  const std::vector<NibbleTables> tables = nibble_tables(alpha, num_masks, planes);
  std::vector<float> table256;
  if (isa == Isa::portable) {
    table256.resize(256 * planes);
    for (int64_t g = 0; g < planes; ++g)
      for (int v = 0; v < 256; ++v) table256[256 * g + v] = tables[g].lo[v & 15] + tables[g].hi[v >> 4];
  }
  const int64_t blocks = (n + kFwdBlock - 1) / kFwdBlock;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    alignas(64) float acc[kFwdBlock];
    const int64_t j0 = blk * kFwdBlock, len = std::min(kFwdBlock, n - j0);
    std::fill(acc, acc + len, 0.0f);
    if (isa == Isa::avx2) accumulate_planes_avx2(bank, n, planes, tables.data(), j0, len, acc);
    else accumulate_planes_portable(bank, n, planes, table256.data(), j0, len, acc);
    switch (dtype) {
      case Dtype::f32: scale_by_weight<Dtype::f32>(weight, j0, len, acc, out); break;
      case Dtype::f16: scale_by_weight<Dtype::f16>(weight, j0, len, acc, out); break;
      case Dtype::bf16: scale_by_weight<Dtype::bf16>(weight, j0, len, acc, out); break;
    }
  }
}

void combine_masks_alpha_grad(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype,
                              const uint8_t* bank, int64_t num_masks, int64_t n, float* grad_alpha, int num_threads,
                              Isa isa) {
  const int64_t planes = (num_masks + 7) / 8;
  const int64_t blocks = (n + kGradBlock - 1) / kGradBlock;
  const int64_t slots = 8 * planes;
  std::vector<double> partial(blocks * slots);  // [block, 8 * plane + bit]
#pragma omp parallel for num_threads(num_threads) schedule(static) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    alignas(64) float u[kGradBlock];
    alignas(64) float w[kGradBlock];
    const int64_t j0 = blk * kGradBlock, len = std::min(kGradBlock, n - j0);
    load_as_float(grad, grad_dtype, j0, len, u);
    load_as_float(weight, weight_dtype, j0, len, w);
    for (int64_t j = 0; j < len; ++j) u[j] *= w[j];
    double* out = partial.data() + blk * slots;
    for (int64_t g = 0; g < planes; ++g) {
      const uint8_t* p = bank + g * n + j0;
      if (isa == Isa::avx2) plane_bit_sums_avx2(p, u, len, out + 8 * g);
      else plane_bit_sums_portable(p, u, len, out + 8 * g);
    }
  }
#pragma omp parallel for num_threads(num_threads) schedule(static) if (blocks * num_masks > (1 << 16))
  for (int64_t k = 0; k < num_masks; ++k) {
    double s = 0.0;
    for (int64_t blk = 0; blk < blocks; ++blk) s += partial[blk * slots + k];
    grad_alpha[k] = static_cast<float>(s);
  }
}

}  // namespace impresslearn::cpu
