// combine forward and alpha gradient on byte-plane banks (see combine.h).
//
// Forward. A byte of plane g holds 8 mask bits, so its contribution
// sum_b alpha[8g+b] bit_b(byte) is a table lookup. A 256-entry table per plane
// would need a gather (slow on this EPYC); instead the byte is split 3 + 3 + 2 bits
// and each group's 8-entry table lives in one ymm register, so three vpermps look
// up 8 weights at once with no memory access (AVX-512: 16 weights, the tables
// repeated to 16 lanes). Measured (1 thread, n = 4M, K = 256, CPU time, AVX2 EPYC):
// two 16-entry nibble tables (4 vpermps + 2 blends) 40 ms; 3+3+2 with two planes per
// accumulator pass 27 ms; the portable 256-entry table 48 ms; a plain read of the
// bank 9 ms. The portable loop uses the 256-entry table T[byte] = plane_value(byte),
// the same fp32 sum in the same order, so every ISA gives identical bits.
// Where the forward's time goes on Zen 1 (the 2-core EPYC, AVX2; 1 thread, n = 1M in
// cache, K = 256, thread CPU time, machine under load, so only the ratios count): the
// loop as written 25.5 ms; with one vpermps per byte instead of three 10.2 ms; with
// none 4.5 ms; one vpshufb in place of the one vpermps 6.1 ms (cost probes, wrong
// results). The cross-lane and in-lane float permutes cost the same there (vpermilps
// for the 2-bit group: no change), 4 planes per accumulator pass gained 2%. So the
// three table look-ups are the forward's cost on Zen 1, and a formulation on vpshufb
// (e.g. 2+2+2+2 bits, 4-entry tables, control bytes built from the byte) is the lead
// for reaching the bank's bandwidth there; it changes the fp32 order (every ISA's).
// Work is split into fixed blocks of the weight axis; a block's fp32 accumulator
// (8 KB) stays in L1 while the G planes stream past it, and every weight is
// computed by one thread in one fixed order: results do not depend on threads.
//
// Alpha gradient. grad_alpha[8g+b] = sum_j u_j bit_b(bank[g, j]) with u = grad * W.
// The order of the sums is fixed (combine_kernels.h): per block of 2048 weights, 8
// fp32 lane sums (lane = j % 8, index order), then fp64. Every ISA follows it:
//   AVX2     8 accumulators per plane in registers; u masked by each bit (bit b
//            moved to the sign bit, vblendvps), 8 lanes at a time, no memory
//            dependence: 49 ms (1 thread, n = 4M, K = 256, CPU time, AVX2 EPYC),
//            under a cycle per weight and plane (8 blends + 8 adds + 8 integer adds).
//   AVX-512  two blocks side by side in the halves of a zmm register, each lane the
//            AVX2 loop's lane of its block: a vptestmb gives the mask of one bit for
//            16 weights and a masked add accumulates, with no blend or shift.
//   portable the same 8 lanes in plain C++ (GCC vectorizes it at SSE2).
// Measured and dropped on the AVX2 EPYC: the per-plane 256-bin weighted histogram,
// 230-315 ms (store-to-load forwarding: masks of density 0.1 make byte 0 about 43% of
// all bytes); 8 planes at once with one FMA per byte against a table of 0.0/1.0 rows
// (acc[q] += row[byte] * u_j), 48 ms, no faster and load-bound.
#include "cpu/combine.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "cpu/combine_kernels.h"

namespace impresslearn::cpu {

namespace detail {

// Two planes per pass over the accumulator halve its loads and stores.
__attribute__((target("avx2,fma"))) void accumulate_planes_avx2(const uint8_t* bank, int64_t n, int64_t planes,
                                                                 const PlaneTables* tables, int64_t j0, int64_t len,
                                                                 float* acc) {
  int64_t g = 0;
  for (; g + 2 <= planes; g += 2) {
    const PlaneTables &ta = tables[g], &tb = tables[g + 1];
    const __m256 a0 = _mm256_load_ps(ta.t0), a1 = _mm256_load_ps(ta.t1), a2 = _mm256_load_ps(ta.t2);
    const __m256 b0 = _mm256_load_ps(tb.t0), b1 = _mm256_load_ps(tb.t1), b2 = _mm256_load_ps(tb.t2);
    const uint8_t* pa = bank + g * n + j0;
    const uint8_t* pb = pa + n;
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
      const __m256i xa = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pa + j)));
      const __m256i xb = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pb + j)));
      const __m256 va = _mm256_add_ps(
          _mm256_add_ps(_mm256_permutevar8x32_ps(a0, xa), _mm256_permutevar8x32_ps(a1, _mm256_srli_epi32(xa, 3))),
          _mm256_permutevar8x32_ps(a2, _mm256_srli_epi32(xa, 6)));
      const __m256 vb = _mm256_add_ps(
          _mm256_add_ps(_mm256_permutevar8x32_ps(b0, xb), _mm256_permutevar8x32_ps(b1, _mm256_srli_epi32(xb, 3))),
          _mm256_permutevar8x32_ps(b2, _mm256_srli_epi32(xb, 6)));
      // acc + va + vb, left to right: the order of the portable loop
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(acc + j), va), vb));
    }
    for (; j < len; ++j) acc[j] = (acc[j] + plane_value(ta, pa[j])) + plane_value(tb, pb[j]);
  }
  for (; g < planes; ++g) {
    const PlaneTables& ta = tables[g];
    const __m256 a0 = _mm256_load_ps(ta.t0), a1 = _mm256_load_ps(ta.t1), a2 = _mm256_load_ps(ta.t2);
    const uint8_t* pa = bank + g * n + j0;
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
      const __m256i xa = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pa + j)));
      const __m256 va = _mm256_add_ps(
          _mm256_add_ps(_mm256_permutevar8x32_ps(a0, xa), _mm256_permutevar8x32_ps(a1, _mm256_srli_epi32(xa, 3))),
          _mm256_permutevar8x32_ps(a2, _mm256_srli_epi32(xa, 6)));
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), va));
    }
    for (; j < len; ++j) acc[j] += plane_value(ta, pa[j]);
  }
}

// The 8 lane sums of every bit, then fp64 (combine_kernels.h). "If the bit is set,
// add u" is what the vector loops' blend and masked add do; this loop adds
// u AND (bit ? all ones : 0), which GCC vectorizes (a branch it does not, 3.6x
// slower). Adding +0.0 for a clear bit leaves the lane's bits as they were: a lane
// starts at +0.0 and is never -0.0 (a sum is -0.0 only if both terms are).
void plane_bit_sums_portable(const uint8_t* p, const float* u, int64_t len, int bits, double* sums) {
  float acc[8][8] = {};
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    uint32_t ubits[8], bytes[8];
    std::memcpy(ubits, u + j, sizeof(ubits));
    for (int i = 0; i < 8; ++i) bytes[i] = p[j + i];
    for (int b = 0; b < bits; ++b)
      for (int i = 0; i < 8; ++i) acc[b][i] += std::bit_cast<float>(ubits[i] & (0u - ((bytes[i] >> b) & 1u)));
  }
  for (int b = 0; b < bits; ++b) {
    double s = 0.0;
    for (float v : acc[b]) s += v;
    for (int64_t i = j; i < len; ++i)
      if ((p[i] >> b) & 1) s += u[i];
    sums[b] = s;
  }
}

namespace {

// Bits is a template argument so the accumulators stay in registers; a last plane
// of fewer masks does only its own bits (K = 25: 25 of 32).
template <int Bits>
__attribute__((target("avx2,fma"))) void bit_sums_avx2(const uint8_t* p, const float* u, int64_t len, double* sums) {
  __m256 acc[Bits];
  for (auto& a : acc) a = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + j)));
    const __m256 uv = _mm256_loadu_ps(u + j);
    // Bit Bits-1 moved to the sign bit, which is all vblendvps reads; each doubling
    // (an add, which more ports run than a shift) brings the next lower bit there.
    // acc = blend(acc, acc + u): written as blend(0, u) + acc, GCC turns the blend
    // into vpcmpgtd + vandps, one instruction more per bit.
    __m256i y = _mm256_slli_epi32(x, 32 - Bits);
    acc[Bits - 1] = _mm256_blendv_ps(acc[Bits - 1], _mm256_add_ps(acc[Bits - 1], uv), _mm256_castsi256_ps(y));
    for (int b = Bits - 2; b >= 0; --b) {
      y = _mm256_add_epi32(y, y);
      acc[b] = _mm256_blendv_ps(acc[b], _mm256_add_ps(acc[b], uv), _mm256_castsi256_ps(y));
    }
  }
  alignas(32) float lanes[8];
  for (int b = 0; b < Bits; ++b) {
    _mm256_store_ps(lanes, acc[b]);
    double s = 0.0;
    for (float v : lanes) s += v;
    for (int64_t i = j; i < len; ++i)
      if ((p[i] >> b) & 1) s += u[i];
    sums[b] = s;
  }
}

}  // namespace

void plane_bit_sums_avx2(const uint8_t* p, const float* u, int64_t len, int bits, double* sums) {
  switch (bits) {
    case 1: return bit_sums_avx2<1>(p, u, len, sums);
    case 2: return bit_sums_avx2<2>(p, u, len, sums);
    case 3: return bit_sums_avx2<3>(p, u, len, sums);
    case 4: return bit_sums_avx2<4>(p, u, len, sums);
    case 5: return bit_sums_avx2<5>(p, u, len, sums);
    case 6: return bit_sums_avx2<6>(p, u, len, sums);
    case 7: return bit_sums_avx2<7>(p, u, len, sums);
    default: return bit_sums_avx2<8>(p, u, len, sums);
  }
}

}  // namespace detail

namespace {

using detail::kFwdBlock;
using detail::kGradBlock;
using detail::PlaneTables;
using detail::plane_value;

}  // namespace

// Declared in combine_kernels.h: combine_rows.cpp builds each row block's tables with it.
std::vector<detail::PlaneTables> detail::plane_tables(const float* alpha, int64_t num_masks, int64_t planes) {
  std::vector<PlaneTables> tables(planes);
  const int first[3] = {0, 3, 6}, width[3] = {3, 3, 2};
  for (int64_t g = 0; g < planes; ++g) {
    float* out[3] = {tables[g].t0, tables[g].t1, tables[g].t2};
    for (int grp = 0; grp < 3; ++grp) {
      for (int v = 0; v < 8; ++v) {
        float s = 0.0f;
        for (int b = 0; b < width[grp]; ++b) {
          const int64_t k = 8 * g + first[grp] + b;
          if (((v >> b) & 1) && k < num_masks) s += alpha[k];
        }
        out[grp][v] = v < (1 << width[grp]) ? s : 0.0f;
      }
    }
  }
  return tables;
}

namespace {

using detail::plane_tables;

void accumulate_planes_portable(const uint8_t* bank, int64_t n, int64_t planes, const float* table256, int64_t j0,
                                int64_t len, float* acc) {
  for (int64_t g = 0; g < planes; ++g) {
    const float* t = table256 + 256 * g;
    const uint8_t* p = bank + g * n + j0;
    for (int64_t j = 0; j < len; ++j) acc[j] += t[p[j]];
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

// u[0, len) = grad[j0 + j] * weight[j0 + j] in fp32.
struct Products {
  const void* grad;
  Dtype grad_dtype;
  const void* weight;
  Dtype weight_dtype;

  void operator()(int64_t j0, int64_t len, float* u) const {
    alignas(64) float w[kGradBlock];
    load_as_float(grad, grad_dtype, j0, len, u);
    load_as_float(weight, weight_dtype, j0, len, w);
    for (int64_t j = 0; j < len; ++j) u[j] *= w[j];
  }
};

// One block's sums of every plane into out[8 * plane + bit].
void block_bit_sums(const Products& products, const uint8_t* bank, int64_t n, int64_t num_masks, int64_t blk, Isa isa,
                    double* out) {
  const int64_t planes = (num_masks + 7) / 8;
  alignas(64) float u[kGradBlock];
  const int64_t j0 = blk * kGradBlock, len = std::min(kGradBlock, n - j0);
  products(j0, len, u);
  for (int64_t g = 0; g < planes; ++g) {
    const uint8_t* p = bank + g * n + j0;
    const int bits = int(std::min<int64_t>(8, num_masks - 8 * g));
    if (isa == Isa::portable) detail::plane_bit_sums_portable(p, u, len, bits, out + 8 * g);
    else detail::plane_bit_sums_avx2(p, u, len, bits, out + 8 * g);
  }
}

// Two full blocks a, a + 1 at once on AVX-512 (combine_kernels.h).
void block_pair_bit_sums(const Products& products, const uint8_t* bank, int64_t n, int64_t num_masks, int64_t a,
                         double* out_a, double* out_b) {
  const int64_t planes = (num_masks + 7) / 8;
  alignas(64) float u[2][kGradBlock];
  alignas(64) float u_pair[2 * kGradBlock];
  products(a * kGradBlock, kGradBlock, u[0]);
  products((a + 1) * kGradBlock, kGradBlock, u[1]);
  for (int64_t q = 0; q < kGradBlock / 8; ++q)
    for (int h = 0; h < 2; ++h) std::memcpy(u_pair + 16 * q + 8 * h, u[h] + 8 * q, 8 * sizeof(float));
  for (int64_t g = 0; g < planes; ++g) {
    const uint8_t* pa = bank + g * n + a * kGradBlock;
    const int bits = int(std::min<int64_t>(8, num_masks - 8 * g));
    detail::plane_pair_bit_sums_avx512(pa, pa + kGradBlock, u_pair, bits, out_a + 8 * g, out_b + 8 * g);
  }
}

}  // namespace

void combine_masks(const void* weight, Dtype dtype, const uint8_t* bank, const float* alpha, int64_t num_masks,
                   int64_t n, void* out, int num_threads, Isa isa) {
  const int64_t planes = (num_masks + 7) / 8;
  const std::vector<PlaneTables> tables = plane_tables(alpha, num_masks, planes);
  std::vector<float> table256;
  if (isa == Isa::portable) {
    table256.resize(256 * planes);
    for (int64_t g = 0; g < planes; ++g)
      for (unsigned v = 0; v < 256; ++v) table256[256 * g + v] = plane_value(tables[g], v);
  }
  const int64_t blocks = (n + kFwdBlock - 1) / kFwdBlock;
  // Dynamic: on a shared machine a preempted thread does not hold the others back.
  // Each block is still computed whole by one thread, so the bits do not change.
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 8) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    alignas(64) float acc[kFwdBlock];
    const int64_t j0 = blk * kFwdBlock, len = std::min(kFwdBlock, n - j0);
    std::fill(acc, acc + len, 0.0f);
    switch (isa) {
      case Isa::avx512: detail::accumulate_planes_avx512(bank, n, planes, tables.data(), j0, len, acc); break;
      case Isa::avx2: detail::accumulate_planes_avx2(bank, n, planes, tables.data(), j0, len, acc); break;
      case Isa::portable: accumulate_planes_portable(bank, n, planes, table256.data(), j0, len, acc); break;
    }
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
  const Products products{grad, grad_dtype, weight, weight_dtype};
  std::vector<double> partial(blocks * slots);  // [block, 8 * plane + bit]
  // AVX-512 takes the full blocks two at a time; a last partial or unpaired block
  // goes to the AVX2 loop, which sums in the same order.
  const int64_t step = isa == Isa::avx512 ? 2 : 1;
  const int64_t tasks = (blocks + step - 1) / step;
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 8) if (tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t a = task * step;
    if (step == 2 && (a + 2) * kGradBlock <= n) {
      block_pair_bit_sums(products, bank, n, num_masks, a, partial.data() + a * slots,
                          partial.data() + (a + 1) * slots);
      continue;
    }
    const Isa block_isa = isa == Isa::portable ? Isa::portable : Isa::avx2;
    for (int64_t blk = a; blk < std::min(a + step, blocks); ++blk)
      block_bit_sums(products, bank, n, num_masks, blk, block_isa, partial.data() + blk * slots);
  }
#pragma omp parallel for num_threads(num_threads) schedule(static) if (blocks * num_masks > (1 << 16))
  for (int64_t k = 0; k < num_masks; ++k) {
    double s = 0.0;
    for (int64_t blk = 0; blk < blocks; ++blk) s += partial[blk * slots + k];
    grad_alpha[k] = static_cast<float>(s);
  }
}

}  // namespace impresslearn::cpu
