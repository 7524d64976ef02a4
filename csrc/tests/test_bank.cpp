// pack / unpack / set_mask against the bit formula of docs/design.md (Formats), on odd shapes.
#include <cstring>

#include "cpu/bank.h"
#include "tests/check.h"

using namespace impresslearn;

static void round_trip(int64_t k, int64_t n, unsigned seed) {
  auto raw = test::random_bits(k * n, 0.3, seed);
  bool* masks = new bool[k * n];
  for (int64_t i = 0; i < k * n; ++i) masks[i] = raw[i];
  const int64_t planes = (k + 7) / 8;
  std::vector<uint8_t> bank(planes * n, 0xAA);  // garbage: pack must overwrite every byte
  cpu::pack_masks(masks, k, n, bank.data());
  for (int64_t m = 0; m < planes * 8; ++m) {
    for (int64_t j = 0; j < n; ++j) {
      const int bit = (bank[(m / 8) * n + j] >> (m % 8)) & 1;
      CHECK(bit == (m < k ? int(masks[m * n + j]) : 0));  // unused bits are 0
    }
  }
  bool* back = new bool[k * n];
  cpu::unpack_masks(bank.data(), k, n, back);
  CHECK(std::memcmp(back, masks, k * n) == 0);

  // Replace mask k-1 with its complement: only that bit of every byte changes.
  bool* flipped = new bool[n];
  for (int64_t j = 0; j < n; ++j) flipped[j] = !masks[(k - 1) * n + j];
  std::vector<uint8_t> before = bank;
  cpu::set_mask(bank.data(), n, k - 1, flipped);
  const uint8_t bit = uint8_t(1u << ((k - 1) % 8));
  for (int64_t i = 0; i < planes * n; ++i) {
    const bool in_plane = i / n == (k - 1) / 8;
    CHECK((bank[i] & ~bit) == (before[i] & ~bit));
    if (in_plane) CHECK(bool(bank[i] & bit) == flipped[i % n]);
    else CHECK(bank[i] == before[i]);
  }
  delete[] masks;
  delete[] back;
  delete[] flipped;
}

int main() {
  const int64_t ks[] = {1, 7, 8, 9, 64, 250};
  const int64_t ns[] = {1, 13, 1000, 70001};
  unsigned seed = 0;
  for (int64_t k : ks)
    for (int64_t n : ns) round_trip(k, n, seed++);
  return test::finish("test_bank");
}
