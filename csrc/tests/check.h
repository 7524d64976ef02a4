// A minimal test harness for the plain C++ kernels (ctest runs each test binary).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace impresslearn::test {

inline int& failures() {
  static int count = 0;
  return count;
}

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++::impresslearn::test::failures();                                    \
    }                                                                        \
  } while (0)

inline int finish(const char* name) {
  if (failures()) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
    return EXIT_FAILURE;
  }
  std::printf("%s: ok\n", name);
  return EXIT_SUCCESS;
}

// Random booleans with P(true) = p, deterministic per seed.
inline std::vector<char> random_bits(size_t count, double p, unsigned seed) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution bit(p);
  std::vector<char> out(count);
  for (auto& b : out) b = bit(gen);
  return out;
}

}  // namespace impresslearn::test
