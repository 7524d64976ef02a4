// topk_mask's extra memory on tied scores (issue: 2^28 equal bf16 scores once took
// 8 bytes of candidate indices per score). Every operator new of this process goes
// through the counting allocator below, so the peak of live heap bytes during one
// call is measured exactly and deterministically; the bound is n / 8 bytes plus the
// fixed histograms, for any thread count and any scores.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#include "cpu/topk.h"
#include "tests/check.h"

namespace {

std::atomic<int64_t> live_bytes{0};
std::atomic<int64_t> peak_bytes{0};

// 16-byte header holding the size, so that unsized delete knows what it frees.
void* counted_alloc(std::size_t size) {
  void* block = std::malloc(size + 16);
  if (block == nullptr) throw std::bad_alloc();
  *static_cast<std::size_t*>(block) = size;
  const int64_t now = live_bytes.fetch_add(int64_t(size)) + int64_t(size);
  int64_t peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
  return static_cast<char*>(block) + 16;
}

void counted_free(void* p) {
  if (p == nullptr) return;
  void* block = static_cast<char*>(p) - 16;
  live_bytes.fetch_sub(int64_t(*static_cast<std::size_t*>(block)));
  std::free(block);
}

}  // namespace

void* operator new(std::size_t size) { return counted_alloc(size); }
void* operator new[](std::size_t size) { return counted_alloc(size); }
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }

using namespace impresslearn;
using cpu::Dtype;

// Histograms: fp32 2^16 high-digit counts (4 B per thread) + their 8-byte sums, and
// 2^15 low-digit counts (4 B per thread) + their sums; fp16/bf16 need less.
constexpr int64_t kFixedBytes = (int64_t(1) << 16) * 12 + (int64_t(1) << 15) * 12;

// Peak extra heap bytes of one topk_mask call on `scores`, and its mask checked.
static int64_t extra_bytes(const void* scores, Dtype dtype, int64_t n, int64_t k, int threads, bool* mask) {
  const int64_t before = live_bytes.load();
  peak_bytes.store(before);
  cpu::topk_mask(scores, dtype, n, k, mask, threads);
  return peak_bytes.load() - before;
}

int main() {
  const int64_t n = int64_t(1) << 22;  // the old code took 8 n = 32 MB here
  std::vector<uint16_t> half(n, cpu::float_to_bf16(0.5f));
  std::vector<float> single(n, -0.5f);
  std::vector<char> mask(n);
  for (int threads : {1, 2, 3}) {
    const int64_t bound = n / 8 + threads * kFixedBytes;
    for (int64_t k : {int64_t(1), n / 2 + 3, n - 1}) {
      for (Dtype dtype : {Dtype::bf16, Dtype::f16, Dtype::f32}) {
        const void* scores = dtype == Dtype::f32 ? static_cast<const void*>(single.data()) : half.data();
        if (dtype == Dtype::f16) std::fill(half.begin(), half.end(), cpu::float_to_half(0.5f));
        if (dtype == Dtype::bf16) std::fill(half.begin(), half.end(), cpu::float_to_bf16(0.5f));
        const int64_t extra = extra_bytes(scores, dtype, n, k, threads, reinterpret_cast<bool*>(mask.data()));
        if (extra > bound)
          std::fprintf(stderr, "threads %d k %lld dtype %d: %lld extra bytes > bound %lld\n", threads, (long long)k,
                       int(dtype), (long long)extra, (long long)bound);
        CHECK(extra <= bound);
        // all tied: the k lowest indices
        CHECK(std::all_of(mask.begin(), mask.begin() + k, [](char b) { return b == 1; }));
        CHECK(std::all_of(mask.begin() + k, mask.end(), [](char b) { return b == 0; }));
      }
    }
  }
  // Half the scores tied at the threshold among distinct others: the tie chunk rescans,
  // a chunk of distinct keys keeps its few candidates.
  for (int64_t j = 0; j < n; ++j) single[j] = j % 2 ? 1.0f : 1.0f + float(j % 4096) * 0x1.0p-12f;
  const int64_t k = n / 2 + n / 4;
  const int64_t extra = extra_bytes(single.data(), Dtype::f32, n, k, 2, reinterpret_cast<bool*>(mask.data()));
  CHECK(extra <= n / 8 + 2 * kFixedBytes);
  CHECK(std::count(mask.begin(), mask.end(), 1) == k);
  return test::finish("test_topk_memory");
}
