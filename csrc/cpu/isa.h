// Which instruction set the hot loops use. The shipped binary is compiled for
// generic x86-64 (no -march=native); the AVX2 loops are separate functions built
// with __attribute__((target("avx2,fma"))) and chosen at run time, so the same
// .so runs on any x86-64 and uses AVX2 where the processor has it.
#pragma once

namespace impresslearn::cpu {

enum class Isa : int { portable = 0, avx2 = 1 };

// AVX2 (and FMA) when the processor has them, else portable. The environment
// variable IMPRESSLEARN_CPU_ISA=portable forces the portable loops (to compare
// or to test them on an AVX2 machine).
Isa best_isa();

const char* isa_name(Isa isa);

}  // namespace impresslearn::cpu
