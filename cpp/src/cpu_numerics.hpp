// The verified-on rule of CPU precisions, as dit_deploy/runtime/cpu_numerics.py: which
// numerics class a precision has on a CPU, and whether a verification record holds there.
// Both sides are tested against tests/fixtures/precision_compat_cases.json.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "dit/manifest.hpp"

namespace dit {

/// What decides a precision's CPU numerics: the architecture and the CPU's flags, named as
/// Linux's /proc/cpuinfo names them ("avx2", "avx512_vnni", "asimddp", ...).
struct CpuMachine {
  std::string arch;  ///< "x86_64", "aarch64"
  std::set<std::string> flags;
};

/// This machine: x86 flags from CPUID (what ONNX Runtime picks kernels by), ARM from
/// /proc/cpuinfo's Features.
CpuMachine this_cpu();
/// "x86-avx512-vnni", "x86-avx2", "arm64-dotprod", ... (the INT8 kernel family).
std::string kernel_family(const CpuMachine& m);
/// The numerics class of `precision` on `m`; "" when it cannot run there (BF16 without units).
std::string precision_numerics(const std::string& precision, int weight_bits,
                               const CpuMachine& m);

struct PrecisionVerdict {
  std::string action;  ///< "run", "reverify" (only when can_reverify) or "refuse"
  std::string reason;
};

/// May `precision` run on `m`, given its record? The C++ runtime cannot run the stored pairs,
/// so it passes can_reverify = false and refuses where Python would re-verify.
PrecisionVerdict precision_verdict(const std::string& precision, const VerifiedRecord& record,
                                   const CpuMachine& m, bool can_reverify);

}  // namespace dit
