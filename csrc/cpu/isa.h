// Which instruction set the hot loops use. The shipped binary is compiled for
// generic x86-64 (no -march=native); the AVX2 and AVX-512 loops are separate
// functions built with __attribute__((target(...))) and chosen at run time, so the
// same .so runs on any x86-64 and uses the widest vectors the processor has.
//
// Every ISA computes the same floating-point operations in the same order, so the
// kernels' results are bit-identical whichever ISA runs them (combine.cpp says how).
#pragma once

#include <string>

namespace impresslearn::cpu {

enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

// The environment variable that forces an ISA: portable, avx2, avx512, or auto
// (the default: the widest the processor supports). Read once per process.
inline constexpr const char* kIsaEnvVar = "IMPRESSLEARN_CPU_ISA";

// Whether this processor (and operating system) can run the loops of `isa`:
// avx2 needs AVX2 + FMA, avx512 needs AVX512F + AVX512BW + AVX512VL as well.
// Builds with IMPRESSLEARN_EMULATE_AVX512 (a ctest build only) run the AVX-512
// loops on SIMDe's portable emulation, so there avx512 is always supported.
bool isa_supported(Isa isa);

// The widest ISA this processor supports.
Isa widest_isa();

// The ISA the kernels use: widest_isa(), or what IMPRESSLEARN_CPU_ISA asks for.
// Throws std::invalid_argument, naming the variable and the reason, when it asks
// for an unknown ISA or for one this processor lacks.
Isa active_isa();

const char* isa_name(Isa isa);

// The processor's ISA extensions that matter here, e.g. "avx2 fma" (for messages).
std::string isa_features();

}  // namespace impresslearn::cpu
