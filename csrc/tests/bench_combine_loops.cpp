// Inner-loop benchmark of combine on one core (not a test; built by CMake as
// bench_combine_loops): thread CPU time, best of 5 repetitions, all variants timed
// round-robin in one process, then cycles per (weight, plane) at the clock a
// 1-cycle dependent add chain measures. It backs the figures in combine.cpp's
// comments and shows where the Zen 1 limits are.
//
//   build-cmake/bench_combine_loops [n]      (default n = 1M weights, K = 256 masks)
//
// Forward (acc += plane_value over 32 planes, 2048-weight blocks, as combine_masks):
//   shipped      detail::accumulate_planes_avx2 (4 + 4 nibbles, vpshufb + unpacks; the
//                rows op's AVX2 loop)
//   vpermps332   the previous loop: 3 + 3 + 2 bits, three vpermps per 8 weights (kept
//                here only as the baseline it was)
//   table        detail::accumulate_planes_table (256-entry tables, scalar look-ups;
//                the same sums; the per-layer op's loop on AVX2 and portable)
//   read         a pass that only reads the bank (its memory floor)
// Alpha gradient (8 lane sums per bit of every plane of 2048-weight blocks):
//   shipped      detail::plane_bit_sums_avx2 (blend per bit)
//   subset256    a candidate with another summation order: per 8 weights the 256
//                subset sums of their u, then one scalar look-up per (8 weights, bit)
//                indexed by the bits movemask gathers
#include <immintrin.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

#include "cpu/combine_kernels.h"
#include "cpu/isa.h"

using namespace impresslearn::cpu;
using detail::kFwdBlock;
using detail::kGradBlock;

namespace {

double thread_ms() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

double clock_ghz() {
  double best = 1e9;
  for (int r = 0; r < 3; ++r) {
    uint64_t x = 0;
    const double t0 = thread_ms();
    // 8 dependent adds an iteration: the chain, not the loop overhead, sets the pace
    for (long i = 0; i < 25000000L; ++i)
      asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                   "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                   : "+r"(x));
    best = std::min(best, thread_ms() - t0);
  }
  return 200000000.0 / (best * 1e6);
}

struct alignas(32) Tables332 {
  float t0[8], t1[8], t2[8];
};

__attribute__((target("avx2,fma"))) void vpermps332(const uint8_t* bank, int64_t n, int64_t planes,
                                                    const Tables332* tables, int64_t j0, int64_t len, float* acc) {
  for (int64_t g = 0; g + 2 <= planes; g += 2) {
    const Tables332 &ta = tables[g], &tb = tables[g + 1];
    const __m256 a0 = _mm256_load_ps(ta.t0), a1 = _mm256_load_ps(ta.t1), a2 = _mm256_load_ps(ta.t2);
    const __m256 b0 = _mm256_load_ps(tb.t0), b1 = _mm256_load_ps(tb.t1), b2 = _mm256_load_ps(tb.t2);
    const uint8_t* pa = bank + g * n + j0;
    const uint8_t* pb = pa + n;
    for (int64_t j = 0; j + 8 <= len; j += 8) {
      const __m256i xa = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pa + j)));
      const __m256i xb = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pb + j)));
      const __m256 va = _mm256_add_ps(
          _mm256_add_ps(_mm256_permutevar8x32_ps(a0, xa), _mm256_permutevar8x32_ps(a1, _mm256_srli_epi32(xa, 3))),
          _mm256_permutevar8x32_ps(a2, _mm256_srli_epi32(xa, 6)));
      const __m256 vb = _mm256_add_ps(
          _mm256_add_ps(_mm256_permutevar8x32_ps(b0, xb), _mm256_permutevar8x32_ps(b1, _mm256_srli_epi32(xb, 3))),
          _mm256_permutevar8x32_ps(b2, _mm256_srli_epi32(xb, 6)));
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(acc + j), va), vb));
    }
  }
}

__attribute__((target("avx2"))) void read_only(const uint8_t* bank, int64_t n, int64_t planes, int64_t j0,
                                               int64_t len, float* acc) {
  __m256i s = _mm256_setzero_si256();
  for (int64_t g = 0; g < planes; ++g)
    for (int64_t j = 0; j + 32 <= len; j += 32)
      s = _mm256_add_epi8(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bank + g * n + j0 + j)));
  acc[0] += float(_mm256_extract_epi32(s, 0));
}

// S[256 q + m] = sum of u[8q + i] over the bits i of m, added from low i to high.
__attribute__((target("avx2"))) void subset_sums(const float* u, int64_t groups, float* S) {
  for (int64_t q = 0; q < groups; ++q) {
    float* s = S + 256 * q;
    const float* uq = u + 8 * q;
    s[0] = 0.0f;
    for (int i = 0; i < 3; ++i)
      for (int m = 0; m < (1 << i); ++m) s[(1 << i) + m] = s[m] + uq[i];
    for (int i = 3; i < 8; ++i) {
      const __m256 ui = _mm256_set1_ps(uq[i]);
      for (int m = 0; m < (1 << i); m += 8)
        _mm256_storeu_ps(s + (1 << i) + m, _mm256_add_ps(_mm256_loadu_ps(s + m), ui));
    }
  }
}

// Two accumulators per bit (even and odd groups) to halve the add chain.
void subset_lookups(const uint8_t* p, const float* S, int64_t groups, float* sums) {
  float even[8] = {}, odd[8] = {};
  for (int64_t q = 0; q + 2 <= groups; q += 2) {
    __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * q));
    const float* s0 = S + 256 * q;
    for (int b = 7; b >= 0; --b) {
      const unsigned m = unsigned(_mm_movemask_epi8(x));  // bit b of 16 weights
      x = _mm_add_epi8(x, x);
      even[b] += s0[m & 0xFF];
      odd[b] += s0[256 + (m >> 8)];
    }
  }
  for (int b = 0; b < 8; ++b) sums[b] = even[b] + odd[b];
}

template <class F>
double best_of(int reps, F f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = thread_ms();
    f();
    best = std::min(best, thread_ms() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (!isa_supported(Isa::avx2)) {
    std::printf("bench_combine_loops: needs AVX2 (this processor has %s)\n", isa_features().c_str());
    return 0;
  }
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : (1 << 20);
  if (n < kFwdBlock || n % kFwdBlock != 0) {
    std::fprintf(stderr, "bench_combine_loops: n must be a positive multiple of %ld\n", long(kFwdBlock));
    return 2;
  }
  const int64_t k = 256, planes = k / 8;
  std::mt19937 rng(1);
  std::vector<uint8_t> bank(n * planes);
  for (auto& byte : bank) {  // masks of density 0.1, as edge-popup leaves them
    unsigned v = 0;
    for (int i = 0; i < 8; ++i) v |= unsigned(rng() % 10 == 0) << i;
    byte = uint8_t(v);
  }
  std::uniform_real_distribution<float> unit(0.0f, 1.0f / k);
  std::vector<float> alpha(k), u(n);
  for (auto& a : alpha) a = unit(rng);
  for (auto& x : u) x = unit(rng) - 0.5f / k;
  const std::vector<detail::PlaneTables> tables = detail::plane_tables(alpha.data(), k, planes);
  std::vector<Tables332> t332(planes);
  for (auto& t : t332)
    for (int i = 0; i < 8; ++i) t.t0[i] = unit(rng), t.t1[i] = unit(rng), t.t2[i] = i < 4 ? unit(rng) : 0.0f;
  std::vector<float> acc(kFwdBlock);
  std::vector<float> S(256 * (kGradBlock / 8));
  std::vector<double> sums(8 * planes);
  std::vector<float> sums32(8 * planes);
  double sink = 0.0;
  auto forward = [&](auto loop) {
    return [&, loop] {
      for (int64_t j0 = 0; j0 < n; j0 += kFwdBlock) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        loop(j0);
        sink += acc[7];
      }
    };
  };
  auto fwd_shipped = forward([&](int64_t j0) {
    detail::accumulate_planes_avx2(bank.data(), n, planes, tables.data(), j0, kFwdBlock, acc.data());
  });
  std::vector<float> table256(256 * planes);
  for (int64_t g = 0; g < planes; ++g)
    for (unsigned v = 0; v < 256; ++v) table256[256 * g + v] = detail::plane_value(tables[g], v);
  auto fwd_table = forward([&](int64_t j0) {
    detail::accumulate_planes_table(bank.data(), n, planes, table256.data(), j0, kFwdBlock, acc.data());
  });
  auto fwd_332 = forward([&](int64_t j0) { vpermps332(bank.data(), n, planes, t332.data(), j0, kFwdBlock, acc.data()); });
  auto fwd_read = forward([&](int64_t j0) { read_only(bank.data(), n, planes, j0, kFwdBlock, acc.data()); });
  auto grad_shipped = [&] {
    for (int64_t j0 = 0; j0 < n; j0 += kGradBlock)
      for (int64_t g = 0; g < planes; ++g)
        detail::plane_bit_sums_avx2(bank.data() + g * n + j0, u.data() + j0, kGradBlock, 8, sums.data() + 8 * g);
    sink += sums[3];
  };
  auto grad_subset = [&] {
    for (int64_t j0 = 0; j0 < n; j0 += kGradBlock) {
      subset_sums(u.data() + j0, kGradBlock / 8, S.data());
      for (int64_t g = 0; g < planes; ++g)
        subset_lookups(bank.data() + g * n + j0, S.data(), kGradBlock / 8, sums32.data() + 8 * g);
      sink += sums32[3];
    }
  };
  const double ghz = clock_ghz();
  const double pairs = double(n) * planes;  // (weight, plane) pairs per pass
  std::printf("bench_combine_loops: n = %ld, K = %ld, 1 thread, thread CPU ms (best of 5), clock %.2f GHz\n",
              long(n), long(k), ghz);
  double t[6] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
  for (int round = 0; round < 3; ++round) {  // round-robin, so load from other processes falls on all
    t[0] = std::min(t[0], best_of(5, fwd_shipped));
    t[1] = std::min(t[1], best_of(5, fwd_332));
    t[2] = std::min(t[2], best_of(5, fwd_read));
    t[3] = std::min(t[3], best_of(5, grad_shipped));
    t[4] = std::min(t[4], best_of(5, grad_subset));
    t[5] = std::min(t[5], best_of(5, fwd_table));
  }
  const char* names[6] = {"forward nibble vpshufb (rows op)", "forward vpermps332 (previous)",
                          "forward read bank only", "alpha grad shipped (blend)", "alpha grad subset256 (candidate)",
                          "forward table (per-layer op)"};
  for (int i = 0; i < 6; ++i)
    std::printf("  %-34s %8.2f ms  %5.2f cycles per (weight, plane)\n", names[i], t[i], t[i] * 1e-3 * ghz * 1e9 / pairs);
  std::printf("  forward: vpshufb %.2fx faster than vpermps332, table %.2fx the speed of vpshufb; alpha grad: subset256 "
              "%.2fx the speed of shipped\n", t[1] / t[0], t[0] / t[5], t[3] / t[4]);
  std::printf("  (checksum %g)\n", sink);
  return 0;
}
