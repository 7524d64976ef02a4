#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace impresslearn::cpu {
namespace {

struct Features {
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512vl = false;
};

// GCC's __builtin_cpu_supports also checks (XGETBV) that the OS saves the ymm/zmm
// state, so a feature reported here is one the process can use.
Features detect() {
  Features f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
#endif
  return f;
}

const Features& features() {
  static const Features f = detect();  // thread-safe one-time initialisation
  return f;
}

struct Choice {
  Isa isa = Isa::portable;
  std::string error;  // non-empty: IMPRESSLEARN_CPU_ISA asked for something unusable
};

Choice choose() {
  Choice c;
  c.isa = widest_isa();
  const char* asked = std::getenv(kIsaEnvVar);
  if (asked == nullptr || *asked == '\0' || std::strcmp(asked, "auto") == 0) return c;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512}) {
    if (std::strcmp(asked, isa_name(isa)) != 0) continue;
    if (isa_supported(isa)) {
      c.isa = isa;
    } else {
      c.error = std::string(kIsaEnvVar) + "=" + asked + " but this processor cannot run it (it has: " +
                isa_features() + "; " + (isa == Isa::avx512 ? "avx512 needs avx512f avx512bw avx512vl" : "avx2 needs avx2 fma") +
                ")";
    }
    return c;
  }
  c.error = std::string(kIsaEnvVar) + "=" + asked + " is not an ISA: use portable, avx2, avx512 or auto";
  return c;
}

}  // namespace

bool isa_supported(Isa isa) {
  const Features& f = features();
  const bool avx2 = f.avx2 && f.fma;
  switch (isa) {
    case Isa::portable: return true;
    case Isa::avx2: return avx2;
    case Isa::avx512:
#ifdef IMPRESSLEARN_EMULATE_AVX512
      return avx2;  // the AVX-512 loops run on SIMDe; the pair kernel's leftovers use the AVX2 loop
#else
      return avx2 && f.avx512f && f.avx512bw && f.avx512vl;
#endif
  }
  return false;
}

Isa widest_isa() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (isa_supported(isa)) return isa;
  return Isa::portable;
}

Isa active_isa() {
  static const Choice choice = choose();
  if (!choice.error.empty()) throw std::invalid_argument(choice.error);
  return choice.isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::portable: return "portable";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "unknown";
}

std::string isa_features() {
  const Features& f = features();
  std::string out;
  const std::pair<bool, const char*> all[] = {{f.avx2, "avx2"},         {f.fma, "fma"},
                                              {f.avx512f, "avx512f"},   {f.avx512bw, "avx512bw"},
                                              {f.avx512vl, "avx512vl"}};
  for (const auto& [has, name] : all) {
    if (!has) continue;
    if (!out.empty()) out += ' ';
    out += name;
  }
  return out.empty() ? "none of avx2 fma avx512f avx512bw avx512vl" : out;
}

}  // namespace impresslearn::cpu
