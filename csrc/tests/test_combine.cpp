// combine forward / alpha gradient against a double-precision naive formula, on odd
// shapes, every dtype, every ISA this processor runs (bit-identical across them) and
// 1 vs 2 threads; plus the fp16/bf16 conversions. Built twice by CMakeLists.txt: the
// second build (test_combine_avx512_emulated) runs the AVX-512 loops on SIMDe.
#include <cmath>
#include <cstring>

#include "cpu/combine.h"
#include "cpu/combine_kernels.h"
#include "tests/check.h"

using namespace impresslearn;
using cpu::Dtype;
using cpu::Isa;

// The ISAs this processor runs; the others are named once, with the reason.
static std::vector<Isa> runnable_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512}) {
    if (cpu::isa_supported(isa)) out.push_back(isa);
    else std::printf("test_combine: %s loops not run: this processor has only %s\n", cpu::isa_name(isa),
                     cpu::isa_features().c_str());
  }
  return out;
}

static bool bit(const std::vector<uint8_t>& bank, int64_t n, int64_t k, int64_t j) {
  return (bank[(k / 8) * n + j] >> (k % 8)) & 1;
}

// Every half: exact decode (checked against ldexp) and encode(decode(h)) == h.
static void test_half_conversions() {
  for (uint32_t h = 0; h < 65536; ++h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const float f = cpu::half_to_float(uint16_t(h));
    if (e == 31) {
      CHECK(m == 0 ? std::isinf(f) && std::signbit(f) == bool(h & 0x8000) : std::isnan(f));
      if (m == 0) CHECK(cpu::float_to_half(f) == h);
      else CHECK(std::isnan(cpu::half_to_float(cpu::float_to_half(f))));
      continue;
    }
    const double want = e == 0 ? sign * std::ldexp(double(m), -24) : sign * std::ldexp(double(1024 + m), e - 25);
    CHECK(double(f) == want);
    CHECK(std::signbit(f) == bool(h & 0x8000));
    CHECK(cpu::float_to_half(f) == h);
  }
  // Round to nearest even at halfway points, and overflow to inf.
  CHECK(cpu::float_to_half(1.0f + 0x1.0p-11f) == 0x3C00);                // tie -> even (1.0)
  CHECK(cpu::float_to_half(1.0f + 3 * 0x1.0p-11f) == 0x3C02);            // tie -> even (1 + 2^-9)
  CHECK(cpu::float_to_half(1.0f + 0x1.0p-11f + 0x1.0p-20f) == 0x3C01);   // above the tie -> up
  CHECK(cpu::float_to_half(65520.0f) == 0x7C00);                          // rounds past max half
  CHECK(cpu::float_to_half(65519.0f) == 0x7BFF);
  CHECK(cpu::float_to_half(0x1.0p-25f) == 0x0000);                        // tie with 0 -> even (0)
  CHECK(cpu::float_to_half(0x1.8p-25f) == 0x0001);                        // above -> smallest subnormal
  CHECK(cpu::float_to_half(-0.0f) == 0x8000);
}

static void test_bf16_conversions() {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = cpu::bf16_to_float(uint16_t(h));
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    CHECK(bits == h << 16);
    if (!std::isnan(f)) CHECK(cpu::float_to_bf16(f) == h);
    else CHECK(std::isnan(cpu::bf16_to_float(cpu::float_to_bf16(f))));
  }
  CHECK(cpu::float_to_bf16(1.0f + 0x1.0p-8f) == 0x3F80);               // tie -> even
  CHECK(cpu::float_to_bf16(1.0f + 3 * 0x1.0p-8f) == 0x3F82);           // tie -> even
  CHECK(cpu::float_to_bf16(1.0f + 0x1.0p-8f + 0x1.0p-20f) == 0x3F81);  // above -> up
  CHECK(std::isnan(cpu::bf16_to_float(cpu::float_to_bf16(std::nanf("")))));
}

static const std::vector<Isa>& runnable_isas_cached() {
  static const std::vector<Isa> isas = runnable_isas();
  return isas;
}

struct Case {
  int64_t k, n;
  std::vector<uint8_t> bank;
  std::vector<float> alpha, weight, grad;
};

static Case make_case(int64_t k, int64_t n, unsigned seed) {
  Case c{k, n, {}, {}, {}, {}};
  const int64_t planes = (k + 7) / 8;
  auto bits = test::random_bits(planes * 8 * n, 0.3, seed);
  c.bank.assign(planes * n, 0);
  for (int64_t m = 0; m < planes * 8; ++m)
    for (int64_t j = 0; j < n; ++j)
      if (bits[m * n + j]) c.bank[(m / 8) * n + j] |= uint8_t(1u << (m % 8));  // bits past K set on purpose
  std::mt19937 gen(seed + 1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t i = 0; i < k; ++i) c.alpha.push_back(dist(gen));
  for (int64_t j = 0; j < n; ++j) c.weight.push_back(dist(gen));
  for (int64_t j = 0; j < n; ++j) c.grad.push_back(dist(gen));
  return c;
}

template <class T, class Enc>
static std::vector<T> encode(const std::vector<float>& x, Enc enc) {
  std::vector<T> out;
  for (float v : x) out.push_back(enc(v));
  return out;
}

static void test_forward(const Case& c, Dtype dtype) {
  const int64_t n = c.n;
  std::vector<uint16_t> w16;
  const void* w = c.weight.data();
  std::vector<float> wf = c.weight;  // the weight as the kernel sees it
  if (dtype != Dtype::f32) {
    w16 = dtype == Dtype::f16 ? encode<uint16_t>(c.weight, cpu::float_to_half) : encode<uint16_t>(c.weight, cpu::float_to_bf16);
    for (int64_t j = 0; j < n; ++j) wf[j] = dtype == Dtype::f16 ? cpu::half_to_float(w16[j]) : cpu::bf16_to_float(w16[j]);
    w = w16.data();
  }
  const size_t elem = dtype == Dtype::f32 ? 4 : 2;
  std::vector<uint8_t> first;
  for (Isa isa : runnable_isas_cached()) {
    for (int threads : {1, 2}) {
      std::vector<uint8_t> out(n * elem, 0xCD);
      cpu::combine_masks(w, dtype, c.bank.data(), c.alpha.data(), c.k, n, out.data(), threads, isa);
      if (first.empty()) first = out;
      CHECK(out == first);  // bit-identical across ISAs and thread counts
    }
  }
  // Against the formula in double; fp32 accumulation of up to K terms, then one
  // rounding to the output dtype.
  const double out_eps = dtype == Dtype::f32 ? 0x1.0p-24 : dtype == Dtype::f16 ? 0x1.0p-11 : 0x1.0p-8;
  for (int64_t j = 0; j < n; ++j) {
    double coeff = 0.0, mag = 0.0;
    for (int64_t k = 0; k < c.k; ++k)
      if (bit(c.bank, n, k, j)) coeff += c.alpha[k], mag += std::fabs(c.alpha[k]);
    const double want = double(wf[j]) * coeff;
    float got;
    if (dtype == Dtype::f32) std::memcpy(&got, first.data() + 4 * j, 4);
    else {
      uint16_t h;
      std::memcpy(&h, first.data() + 2 * j, 2);
      got = dtype == Dtype::f16 ? cpu::half_to_float(h) : cpu::bf16_to_float(h);
    }
    // fp16 outputs below 2^-14 are subnormal: half their spacing (2^-25) is absolute.
    const double subnormal = dtype == Dtype::f16 ? 0x1.0p-25 : 0.0;
    const double tol = std::fabs(wf[j]) * mag * c.k * 0x1.0p-24 + std::fabs(want) * out_eps + subnormal + 1e-30;
    CHECK(std::fabs(double(got) - want) <= tol);
  }
}

static void test_alpha_grad(const Case& c) {
  const int64_t n = c.n;
  std::vector<float> want_abs(c.k, 0.0f);
  std::vector<std::vector<float>> results;
  for (Isa isa : runnable_isas_cached()) {
    std::vector<float> one(c.k, -7.0f), two(c.k, -7.0f);
    cpu::combine_masks_alpha_grad(c.grad.data(), Dtype::f32, c.weight.data(), Dtype::f32, c.bank.data(), c.k, n,
                                  one.data(), 1, isa);
    cpu::combine_masks_alpha_grad(c.grad.data(), Dtype::f32, c.weight.data(), Dtype::f32, c.bank.data(), c.k, n,
                                  two.data(), 2, isa);
    CHECK(one == two);  // deterministic in the thread count
    if (!results.empty()) CHECK(std::memcmp(one.data(), results[0].data(), 4 * c.k) == 0);  // and in the ISA
    results.push_back(one);
  }
  for (int64_t k = 0; k < c.k; ++k) {
    double want = 0.0, mag = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double u = double(float(c.grad[j] * c.weight[j]));
      if (bit(c.bank, n, k, j)) want += u, mag += std::fabs(u);
    }
    // fp32 partial sums of at most 256 terms per lane, fp64 beyond: error << 256 eps * sum|u|
    const double tol = mag * 256 * 0x1.0p-24 + std::fabs(want) * 0x1.0p-24 + 1e-30;
    for (const auto& r : results) CHECK(std::fabs(double(r[k]) - want) <= tol);
  }
  // Half-precision inputs: the kernel multiplies the decoded values in fp32.
  auto g16 = encode<uint16_t>(c.grad, cpu::float_to_bf16);
  auto w16 = encode<uint16_t>(c.weight, cpu::float_to_half);
  std::vector<float> mixed(c.k);
  cpu::combine_masks_alpha_grad(g16.data(), Dtype::bf16, w16.data(), Dtype::f16, c.bank.data(), c.k, n, mixed.data(), 2);
  for (int64_t k = 0; k < c.k; ++k) {
    double want = 0.0, mag = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double u = double(cpu::bf16_to_float(g16[j]) * cpu::half_to_float(w16[j]));
      if (bit(c.bank, n, k, j)) want += u, mag += std::fabs(u);
    }
    CHECK(std::fabs(double(mixed[k]) - want) <= mag * 256 * 0x1.0p-24 + 1e-30);
  }
  for (Isa isa : runnable_isas_cached()) {
    std::vector<float> again(c.k);
    cpu::combine_masks_alpha_grad(g16.data(), Dtype::bf16, w16.data(), Dtype::f16, c.bank.data(), c.k, n, again.data(),
                                  1, isa);
    CHECK(std::memcmp(again.data(), mixed.data(), 4 * c.k) == 0);
  }
}

// The inner loops' contract (combine_kernels.h), which combine_rows.cpp relies on too:
// acc[0, len) += plane_value(tables[g], byte) for every plane, planes two at a time as
// ((acc + v_g) + v_g+1), on an accumulator that is not zero (the vector loops keep it
// in their lookup order while they run and must give it back in weight order), for
// lengths around the 8-, 32- and 64-weight chunks and plane counts around the portable
// loop's passes of 4, bit for bit.
static void test_accumulate_planes_contract() {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t planes : {1, 2, 3, 4, 5, 9}) {
    const int64_t k = 8 * planes - 3;  // the last plane's top bits are past K: they must count as alpha = 0
    std::vector<float> alpha(k);
    for (auto& a : alpha) a = dist(gen);
    const auto tables = cpu::detail::plane_tables(alpha.data(), k, planes);
    // plane_value itself: lo + hi of the byte's nibbles, alpha of masks >= k left out
    for (unsigned v = 0; v < 256; ++v) {
      float lo = 0.0f, hi = 0.0f;
      for (int b = 0; b < 4; ++b) {
        if (((v >> b) & 1) && 8 * (planes - 1) + b < k) lo += alpha[8 * (planes - 1) + b];
        if (((v >> (4 + b)) & 1) && 8 * (planes - 1) + 4 + b < k) hi += alpha[8 * (planes - 1) + 4 + b];
      }
      CHECK(cpu::detail::plane_value(tables[planes - 1], v) == lo + hi);
    }
    for (int64_t len : {1, 31, 32, 33, 63, 64, 65, 96, 130, 2048}) {
      const int64_t n = len + 5, j0 = 3;  // a window inside each plane
      std::vector<uint8_t> bank(planes * n);
      for (auto& b : bank) b = uint8_t(gen());
      std::vector<float> start(len);
      for (auto& a : start) a = dist(gen);
      std::vector<float> want = start;
      for (int64_t j = 0; j < len; ++j) {
        int64_t g = 0;
        for (; g + 2 <= planes; g += 2)
          want[j] = (want[j] + cpu::detail::plane_value(tables[g], bank[g * n + j0 + j])) +
                    cpu::detail::plane_value(tables[g + 1], bank[(g + 1) * n + j0 + j]);
        for (; g < planes; ++g) want[j] += cpu::detail::plane_value(tables[g], bank[g * n + j0 + j]);
      }
      std::vector<float> table256(256 * planes);  // the portable loop's tables
      for (int64_t g = 0; g < planes; ++g)
        for (unsigned v = 0; v < 256; ++v) table256[256 * g + v] = cpu::detail::plane_value(tables[g], v);
      for (Isa isa : runnable_isas_cached()) {
        std::vector<float> acc = start;
        if (isa == Isa::portable) cpu::detail::accumulate_planes_table(bank.data(), n, planes, table256.data(), j0, len, acc.data());
        else if (isa == Isa::avx2) cpu::detail::accumulate_planes_avx2(bank.data(), n, planes, tables.data(), j0, len, acc.data());
        else cpu::detail::accumulate_planes_avx512(bank.data(), n, planes, tables.data(), j0, len, acc.data());
        CHECK(std::memcmp(acc.data(), want.data(), 4 * len) == 0);
      }
    }
  }
}

int main() {
  const std::vector<Isa>& isas = runnable_isas_cached();
  std::printf("test_combine: ISAs run:");
  for (Isa isa : isas) std::printf(" %s", cpu::isa_name(isa));
  std::printf("\n");
  test_half_conversions();
  test_bf16_conversions();
  test_accumulate_planes_contract();
  const int64_t ks[] = {1, 7, 8, 9, 64, 250};
  // 4096 and 6144: whole pairs of 2048-weight blocks and one left over (AVX-512 pairs them)
  const int64_t ns[] = {1, 13, 1000, 4096, 4099, 6144, 70001};
  unsigned seed = 0;
  for (int64_t k : ks)
    for (int64_t n : ns) {
      if (k * n > 3000000) continue;  // keep the naive double reference quick
      const Case c = make_case(k, n, seed++);
      for (Dtype d : {Dtype::f32, Dtype::f16, Dtype::bf16}) test_forward(c, d);
      test_alpha_grad(c);
    }
  return test::finish("test_combine");
}
