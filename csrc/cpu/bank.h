// Byte-plane mask banks (docs/design.md, Formats): bit b of bank[g * n + j] is mask 8g+b at
// weight j. Plain C++ on raw pointers, no torch headers, so ctest builds it alone.
#pragma once

#include <cstdint>

namespace impresslearn::cpu {

// masks: bool[K * n] row-major (one mask per row) -> bank: uint8[ceil(K/8) * n].
void pack_masks(const bool* masks, int64_t num_masks, int64_t n, uint8_t* bank);

// bank: uint8[ceil(K/8) * n] -> masks: bool[K * n].
void unpack_masks(const uint8_t* bank, int64_t num_masks, int64_t n, bool* masks);

// Overwrite mask `index` (bit index % 8 of plane index / 8) with mask[n].
void set_mask(uint8_t* bank, int64_t n, int64_t index, const bool* mask);

}  // namespace impresslearn::cpu
