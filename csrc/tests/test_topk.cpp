// topk_mask against a stable sort of |scores| (descending, ties to the lower index),
// on random, tie-heavy, all-equal and signed-zero scores, every dtype, 1..3 threads.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "cpu/topk.h"
#include "tests/check.h"

using namespace impresslearn;
using cpu::Dtype;

static std::vector<char> sorted_mask(const std::vector<float>& absval, int64_t k) {
  std::vector<int64_t> order(absval.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return absval[a] > absval[b]; });
  std::vector<char> mask(absval.size(), 0);
  for (int64_t i = 0; i < k; ++i) mask[order[i]] = 1;
  return mask;
}

// Runs both entry points for one score vector and compares them with the sort.
static void check_case(const std::vector<float>& values, Dtype dtype, int64_t k) {
  const int64_t n = int64_t(values.size());
  std::vector<uint16_t> half(n);
  std::vector<float> seen(n);  // |score| as the kernel sees it after the dtype conversion
  for (int64_t j = 0; j < n; ++j) {
    if (dtype == Dtype::f16) half[j] = cpu::float_to_half(values[j]), seen[j] = std::fabs(cpu::half_to_float(half[j]));
    else if (dtype == Dtype::bf16) half[j] = cpu::float_to_bf16(values[j]), seen[j] = std::fabs(cpu::bf16_to_float(half[j]));
    else seen[j] = std::fabs(values[j]);
  }
  const void* scores = dtype == Dtype::f32 ? static_cast<const void*>(values.data()) : half.data();
  const std::vector<char> want = sorted_mask(seen, k);
  for (int threads : {1, 2, 3}) {
    std::vector<char> got(n, 7);
    cpu::topk_mask(scores, dtype, n, k, reinterpret_cast<bool*>(got.data()), threads);
    CHECK(got == want);
    CHECK(std::count(got.begin(), got.end(), 1) == k);
  }
  // Into plane 1, bit 3 of a 2-plane bank of random bytes: only that bit changes.
  std::vector<uint8_t> bank(2 * n);
  std::mt19937 gen(unsigned(n + k));
  for (auto& b : bank) b = uint8_t(gen());
  const std::vector<uint8_t> before = bank;
  cpu::topk_mask_into(scores, dtype, n, k, bank.data(), 11, 2);
  for (int64_t j = 0; j < n; ++j) {
    CHECK(bank[j] == before[j]);
    CHECK((bank[n + j] & ~0x08) == (before[n + j] & ~0x08));
    CHECK(bool(bank[n + j] & 0x08) == bool(want[j]));
  }
}

static void check_all(const std::vector<float>& values, const std::vector<int64_t>& ks) {
  for (Dtype d : {Dtype::f32, Dtype::f16, Dtype::bf16})
    for (int64_t k : ks) check_case(values, d, k);
}

int main() {
  std::mt19937 gen(1);
  for (int64_t n : {1, 2, 13, 1000, 4099, 70001}) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> random(n), coarse(n), equal(n, -0.75f), zeros(n);
    for (auto& v : random) v = normal(gen);
    std::uniform_int_distribution<int> small(-3, 3);
    for (auto& v : coarse) v = 0.5f * float(small(gen));  // many ties, both signs
    for (int64_t j = 0; j < n; ++j) zeros[j] = (j % 3 == 0) ? -0.0f : (j % 3 == 1 ? 0.0f : 1e-3f);
    const std::vector<int64_t> ks = {1, std::max<int64_t>(1, n / 10), (n + 1) / 2, n};
    check_all(random, ks);
    check_all(coarse, ks);
    check_all(equal, ks);
    check_all(zeros, ks);
  }
  // Keys that share the fp32 high digit and differ only in the low bits.
  std::vector<float> close(50000);
  for (size_t j = 0; j < close.size(); ++j) close[j] = 1.0f + float((j * 7919) % 97) * 0x1.0p-23f;
  check_all(close, {1, 500, 25000, 49999});
  return test::finish("test_topk");
}
