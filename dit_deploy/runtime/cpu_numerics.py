"""Which CPU kernels a precision runs on, and whether a verification made on one CPU holds here.

A CPU precision is verified the way an engine is built: on one machine, whose kernels decide
the numbers. What changes them (measured, docs/benchmarks.md "INT8 per ISA"):

- INT8 on x86 without VNNI (AVX2, AVX512 without VNNI) multiplies with ``vpmaddubsw``: u8 x s8
  products summed in pairs into a *saturating* int16. ONNX Runtime and oneDNN (OpenVINO) feed
  signed activations as ``s8 + 128``, so weights (the second operand) up to 127 overflow
  (255 * 127 * 2 > 32767); VNNI (``vpdpbusd``) and AMX accumulate in int32 and do not. Graphs
  quantized with 7-bit second operands (``Int8Options.weight_bits = 7``, the default) cannot
  overflow on either: their numerics are the same on every x86 CPU ("x86-int8-exact").
- BF16 runs natively only with AVX512-BF16 or AMX-BF16; elsewhere OpenVINO would run FP32
  under the bf16 label, so it is refused, not emulated.
- ARM has its own INT8 dot-product and FP16 kernels: verified on x86 means re-verify there.

Each verified precision records, per machine it was verified on, its numerics class
(:func:`numerics`). At load, :func:`verdict` compares that with this machine's class: the same
class runs; another class is re-verified on the export's stored pairs (Python) or refused with
the command that re-verifies here (C++, which applies the same table:
``tests/fixtures/precision_compat_cases.json``).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# How much lower the stored pairs' low-res mask agreement may be on a machine of another class
# (or in another runtime) than where the precision was verified. Measured on the bundled model
# (docs/benchmarks.md, "INT8 per ISA"): the 7-bit INT8 graphs give the same agreement on AVX2
# and AVX512-VNNI in ONNX Runtime (within 0.001) and in OpenVINO, and OpenVINO's agreement on
# the 8 stored pairs differs from ONNX Runtime's (the verifier's) by up to 0.015; saturating
# 8-bit graphs lose 0.04-0.2 on AVX2, which this must catch.
REVERIFY_TOLERANCE = 0.02

_X86 = ("x86_64", "amd64", "i686", "i386")
_ARM = ("aarch64", "arm64")
# x86 kernel families, most capable first: (family, the flag that marks it)
_X86_FAMILIES = (
    ("x86-amx", "amx_int8"),
    ("x86-avx512-vnni", "avx512_vnni"),
    ("x86-avx-vnni", "avx_vnni"),
    ("x86-avx512", "avx512bw"),
    ("x86-avx2", "avx2"),
)
_VNNI_FAMILIES = ("x86-amx", "x86-avx512-vnni", "x86-avx-vnni")
# the flags that change a precision's numerics (recorded with each verification)
NUMERICS_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "i8mm",
    "bf16",
    "fphp",
)


@dataclass(frozen=True)
class Machine:
    """What decides a precision's CPU numerics: the architecture and the CPU's flags."""

    arch: str  # "x86_64", "aarch64"
    flags: frozenset[str]
    cpu: str = ""  # the model name, for people

    @classmethod
    def of(cls, arch: str, flags: Iterable[str], cpu: str = "") -> Machine:
        return cls(arch.lower(), frozenset(flags), cpu)

    @property
    def is_x86(self) -> bool:
        return self.arch in _X86

    @property
    def is_arm(self) -> bool:
        return self.arch in _ARM

    @property
    def family(self) -> str:
        """The INT8 kernel family: ``x86-avx512-vnni``, ``x86-avx2``, ``arm64-dotprod``, ..."""
        if self.is_x86:
            return next((name for name, flag in _X86_FAMILIES if flag in self.flags), "x86")
        if self.is_arm:
            if "i8mm" in self.flags:
                return "arm64-i8mm"
            return "arm64-dotprod" if "asimddp" in self.flags else "arm64"
        return self.arch or "unknown"

    @property
    def has_bf16_units(self) -> bool:
        if self.is_x86:
            return bool({"avx512_bf16", "amx_bf16"} & self.flags)
        return self.is_arm and "bf16" in self.flags

    def describe(self) -> str:
        """``x86-avx512-vnni (avx2 avx512_vnni ...; AMD EPYC ...)``: for report headers."""
        flags = " ".join(f for f in NUMERICS_FLAGS if f in self.flags) or "none"
        return f"{self.family} (numerics flags: {flags}{'; ' + self.cpu if self.cpu else ''})"


# /proc/cpuinfo flag -> numpy's name for it (numpy asks CPUID itself, as the runtimes do)
_NUMPY_NAMES = {"avx2": "AVX2", "avx512bw": "AVX512BW", "avx512_vnni": "AVX512VNNI"}


def _cpuid_features() -> dict[str, bool]:
    """numpy's CPUID-based features (``AVX2``, ``AVX512VNNI``, ...), {} if unavailable."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return {}
    return dict(features)


def this_machine(cpuinfo: str | Path = "/proc/cpuinfo") -> Machine:
    """This machine: its arch and the flags of ``/proc/cpuinfo`` (x86 ``flags``, ARM
    ``Features``), checked against what CPUID says through numpy. Where they disagree (an
    emulator such as ``qemu-x86_64 -cpu Haswell`` shows the host's /proc/cpuinfo but its own
    CPUID, and CPUID is what ONNX Runtime and OpenVINO pick kernels by), the CPUID answer wins
    and the flags it cannot confirm (AVX-VNNI, BF16, AMX) are dropped."""
    machine = _from_cpuinfo(cpuinfo)
    cpuid = _cpuid_features() if machine.is_x86 else {}
    if not cpuid:
        return machine
    confirmed = {flag for flag, name in _NUMPY_NAMES.items() if cpuid.get(name)}
    known = set(_NUMPY_NAMES)
    if confirmed == machine.flags & known:
        return machine
    flags = set(machine.flags - known - set(NUMERICS_FLAGS)) | confirmed
    if cpuid.get("FMA3"):
        flags.add("fma")
    if cpuid.get("AVX512F"):
        flags.add("avx512f")
    return Machine.of(machine.arch, flags, machine.cpu + " (CPUID differs from /proc/cpuinfo)")


def _from_cpuinfo(cpuinfo: str | Path) -> Machine:
    flags: set[str] = set()
    cpu = ""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model") and not cpu:
            cpu = value.strip()
    return Machine.of(platform.machine() or "unknown", flags, cpu)


def numerics(precision: str, scheme: Mapping[str, Any], machine: Machine) -> str | None:
    """The class of numerics ``precision`` (with its quantization ``scheme``) has on
    ``machine``; two machines of one class give the same masks. None: it cannot run there."""
    arch = "x86" if machine.is_x86 else "arm64" if machine.is_arm else machine.arch
    if precision == "fp32":
        return "fp32"
    if precision == "bf16":
        return f"{arch}-bf16" if machine.has_bf16_units else None
    if precision == "int8":
        if not machine.is_x86:
            return f"{arch}-int8"
        if int(scheme.get("weight_bits", 8)) <= 7:
            return "x86-int8-exact"
        return "x86-int8-vnni" if machine.family in _VNNI_FAMILIES else "x86-int8-saturating"
    return f"{arch}-{precision}"


@dataclass(frozen=True)
class Verdict:
    """``run``, ``reverify`` (on the stored pairs) or ``refuse``, and why."""

    action: str
    reason: str = ""


def verdict(
    precision: str,
    record: Mapping[str, Any] | None,
    machine: Machine,
    can_reverify: bool,
) -> Verdict:
    """May ``precision`` run on ``machine``, given its verification ``record`` (the
    manifest's ``verified[precision]``: ``{"scheme": {...}, "on": [{"numerics": ...}, ...]}``)?
    ``can_reverify``: the stored pairs are there and this runtime can run them (Python)."""
    if precision == "fp32":
        return Verdict("run")
    scheme = (record or {}).get("scheme", {})
    here = numerics(precision, scheme, machine)
    if here is None:
        return Verdict(
            "refuse",
            f"this CPU ({machine.family}) has no BF16 units (AVX512-BF16 or AMX): OpenVINO would "
            "run FP32 under the bf16 label; use fp32 or int8 here",
        )
    if not record or not record.get("on"):
        return Verdict(
            "refuse",
            f"the {precision} graphs carry no record of the CPU they were verified on (made by "
            "an older dit-deploy); verify them here",
        )
    verified = [str(r.get("numerics")) for r in record["on"]]
    if here in verified:
        return Verdict("run")
    why = (
        f"the {precision} graphs were verified on {_names(record['on'])}; this CPU "
        f"({machine.family}) computes them as {here}"
    )
    if can_reverify:
        return Verdict("reverify", why)
    return Verdict("refuse", why)


def _names(records: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{r.get('kernels', '?')} ({r.get('numerics')})" for r in records)
