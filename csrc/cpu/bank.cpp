#include "cpu/bank.h"

#include <algorithm>

namespace impresslearn::cpu {

void pack_masks(const bool* masks, int64_t num_masks, int64_t n, uint8_t* bank) {
  const int64_t planes = (num_masks + 7) / 8;
  // One plane at a time, weights in the inner loop: each mask row is read once,
  // streaming, and the compiler vectorizes the OR of up to 8 rows.
#pragma omp parallel for schedule(static) if (planes * n > (1 << 16))
  for (int64_t g = 0; g < planes; ++g) {
    uint8_t* out = bank + g * n;
    std::fill(out, out + n, uint8_t{0});
    const int64_t bits = std::min<int64_t>(8, num_masks - 8 * g);
    for (int64_t b = 0; b < bits; ++b) {
      const bool* row = masks + (8 * g + b) * n;
      for (int64_t j = 0; j < n; ++j) out[j] |= static_cast<uint8_t>(row[j]) << b;
    }
  }
}

void unpack_masks(const uint8_t* bank, int64_t num_masks, int64_t n, bool* masks) {
#pragma omp parallel for schedule(static) if (num_masks * n > (1 << 16))
  for (int64_t k = 0; k < num_masks; ++k) {
    const uint8_t* plane = bank + (k / 8) * n;
    const int bit = static_cast<int>(k % 8);
    bool* row = masks + k * n;
    for (int64_t j = 0; j < n; ++j) row[j] = (plane[j] >> bit) & 1;
  }
}

void set_mask(uint8_t* bank, int64_t n, int64_t index, const bool* mask) {
  uint8_t* plane = bank + (index / 8) * n;
  const int bit = static_cast<int>(index % 8);
  const uint8_t keep = static_cast<uint8_t>(~(1u << bit));
#pragma omp parallel for schedule(static) if (n > (1 << 18))
  for (int64_t j = 0; j < n; ++j) {
    plane[j] = static_cast<uint8_t>((plane[j] & keep) | (static_cast<uint8_t>(mask[j]) << bit));
  }
}

}  // namespace impresslearn::cpu
