#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace impresslearn::cpu {

static Isa detect() {
  const char* forced = std::getenv("IMPRESSLEARN_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "portable") == 0) return Isa::portable;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::portable;
}

Isa best_isa() {
  static const Isa isa = detect();  // thread-safe one-time initialisation
  return isa;
}

const char* isa_name(Isa isa) { return isa == Isa::avx2 ? "avx2" : "portable"; }

}  // namespace impresslearn::cpu
