// The verified-on rule shared with the Python runtime: see cpu_numerics.hpp.
#include "cpu_numerics.hpp"

#include <sys/utsname.h>

#include <fstream>
#include <sstream>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace dit {
namespace {

bool has(const CpuMachine& m, const std::string& flag) { return m.flags.count(flag) > 0; }

bool is_x86(const CpuMachine& m) {
  return m.arch == "x86_64" || m.arch == "amd64" || m.arch == "i686" || m.arch == "i386";
}

bool is_arm(const CpuMachine& m) { return m.arch == "aarch64" || m.arch == "arm64"; }

}  // namespace

CpuMachine this_cpu() {
  CpuMachine m;
  struct utsname u {};
  m.arch = ::uname(&u) == 0 ? std::string(u.machine) : std::string("unknown");
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 12))) m.flags.insert("fma");
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    const std::pair<unsigned, const char*> ebx[] = {
        {5, "avx2"}, {16, "avx512f"}, {30, "avx512bw"}};
    for (const auto& [bit, name] : ebx) {
      if (b & (1u << bit)) m.flags.insert(name);
    }
    if (c & (1u << 11)) m.flags.insert("avx512_vnni");
    if (d & (1u << 22)) m.flags.insert("amx_bf16");
    if (d & (1u << 25)) m.flags.insert("amx_int8");
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
    if (a & (1u << 4)) m.flags.insert("avx_vnni");
    if (a & (1u << 5)) m.flags.insert("avx512_bf16");
  }
#else
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos || line.rfind("Features", 0) != 0) continue;
    std::istringstream words(line.substr(colon + 1));
    std::string w;
    while (words >> w) m.flags.insert(w);
    break;
  }
#endif
  return m;
}

std::string kernel_family(const CpuMachine& m) {
  if (is_x86(m)) {
    const std::pair<const char*, const char*> families[] = {
        {"x86-amx", "amx_int8"},       {"x86-avx512-vnni", "avx512_vnni"},
        {"x86-avx-vnni", "avx_vnni"},  {"x86-avx512", "avx512bw"},
        {"x86-avx2", "avx2"}};
    for (const auto& [name, flag] : families) {
      if (has(m, flag)) return name;
    }
    return "x86";
  }
  if (is_arm(m)) {
    if (has(m, "i8mm")) return "arm64-i8mm";
    return has(m, "asimddp") ? "arm64-dotprod" : "arm64";
  }
  return m.arch.empty() ? "unknown" : m.arch;
}

std::string precision_numerics(const std::string& precision, int weight_bits,
                               const CpuMachine& m) {
  const std::string arch = is_x86(m) ? "x86" : is_arm(m) ? "arm64" : m.arch;
  if (precision == "fp32") return "fp32";
  if (precision == "bf16") {
    const bool units = is_x86(m) ? has(m, "avx512_bf16") || has(m, "amx_bf16")
                                 : is_arm(m) && has(m, "bf16");
    return units ? arch + "-bf16" : "";
  }
  if (precision == "int8") {
    if (!is_x86(m)) return arch + "-int8";
    if (weight_bits <= 7) return "x86-int8-exact";
    const std::string family = kernel_family(m);
    const bool vnni =
        family == "x86-amx" || family == "x86-avx512-vnni" || family == "x86-avx-vnni";
    return vnni ? "x86-int8-vnni" : "x86-int8-saturating";
  }
  return arch + "-" + precision;
}

PrecisionVerdict precision_verdict(const std::string& precision, const VerifiedRecord& record,
                                   const CpuMachine& m, bool can_reverify) {
  if (precision == "fp32") return {"run", ""};
  const std::string family = kernel_family(m);
  const std::string here = precision_numerics(precision, record.weight_bits, m);
  if (here.empty()) {
    return {"refuse", "this CPU (" + family +
                          ") has no BF16 units (AVX512-BF16 or AMX): OpenVINO would run FP32 "
                          "under the bf16 label; use fp32 or int8 here"};
  }
  if (!record.present || record.on.empty()) {
    return {"refuse", "the " + precision +
                          " graphs carry no record of the CPU they were verified on (made by an "
                          "older dit-deploy); verify them here"};
  }
  std::string names;
  for (const auto& r : record.on) {
    if (r.numerics == here) return {"run", ""};
    names += (names.empty() ? "" : ", ") + r.kernels + " (" + r.numerics + ")";
  }
  const std::string why = "the " + precision + " graphs were verified on " + names +
                          "; this CPU (" + family + ") computes them as " + here;
  return {can_reverify ? "reverify" : "refuse", why};
}

}  // namespace dit
