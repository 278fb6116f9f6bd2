"""Switch each guard off, run the tests that should notice, and report the survivors.

    .venv/bin/python scripts/mutation_check.py            # every mutation (~5-10 min, 2 cores)
    .venv/bin/python scripts/mutation_check.py --list     # what would be mutated
    .venv/bin/python scripts/mutation_check.py -k hash    # mutations whose name contains "hash"

A mutation replaces one exact snippet of source with a broken version (the file is restored
afterwards, also on Ctrl-C). It is "killed" when the listed tests fail, and "survived" when
they pass: then the guard is not proven by any test. Exit code: the number of survivors.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = "not kill_9"  # the kill -9 tests prove atomicity, not these guards


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "int8 checker: zero points",
        "dit_deploy/precision/graph_checks.py",
        "if numpy_helper.to_array(zp).any():",
        "if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "int8 checker: per-channel axis",
        "dit_deploy/precision/graph_checks.py",
        'if _attr(node, "axis", 1) != want:',
        "if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "fp16 checker: islands",
        "dit_deploy/precision/graph_checks.py",
        '        if elem == TensorProto.FLOAT16:\n            problems.append(f"{node.op_type}',
        '        if False:\n            problems.append(f"{node.op_type}',
        ("tests/test_guards.py",),
    ),
    Mutation(
        "precision floor: mIoU drop",
        "dit_deploy/precision/verify.py",
        "if -self.miou_change > floor.max_miou_drop:",
        "if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "precision floor: mask agreement",
        "dit_deploy/precision/verify.py",
        "if self.mask_iou < floor.min_mask_iou:",
        "if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "export validation: mask gate",
        "dit_deploy/exporters/validate.py",
        "masks = self.mask_iou is None or self.mask_iou >= (self.min_mask_iou or 0.0)",
        "masks = True",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "artifact hashes: verification",
        "dit_deploy/runtime/manifest.py",
        "if recorded and cached_sha256(path) != recorded:",
        "if False:",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "manifest schema: types",
        "dit_deploy/schema.py",
        "        if not _matches_type(value, schema):\n            fail(_name(schema))",
        "        pass",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "API: predict_batch pairs",
        "dit_deploy/runtime/predictor.py",
        "if not isinstance(pair, (tuple, list)) or len(pair) != 2:",
        "if False:",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "artifacts: recovery after an interrupted swap",
        "dit_deploy/artifact_dir.py",
        'if kind == "old" and not target.exists():',
        "if False:",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "artifacts: live writers are spared",
        "dit_deploy/artifact_dir.py",
        "        if pid_alive(pid):\n            continue",
        "        pass",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "runtime: manifest threshold",
        "dit_deploy/runtime/predictor.py",
        "self.low_res_logits(feeds), boxes, self.manifest.mask_threshold",
        "self.low_res_logits(feeds), boxes, 0.35",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "postprocess: letterbox left offset",
        "dit_deploy/postprocess.py",
        "lb.left : lb.left + lb.new_w]",
        ": lb.new_w]",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "smoothing: kept only where it lowers the held-out error",
        "dit_deploy/precision/smooth.py",
        "if smoothed < keep * plain",
        "",
        ("tests/test_precision_smooth.py",),
    ),
    Mutation(
        "int8 range cache: keyed by the graph quantized",
        "dit_deploy/precision/pipeline.py",
        "cached_sha256(src),  # the graph quantized",
        'stamp["dit.source_graph_sha256"],  # the graph quantized',
        ("tests/test_precision_smooth.py", "tests/test_precision_auto.py"),
    ),
    Mutation(
        "verified-on: a numerics class not recorded is not run as verified",
        "dit_deploy/runtime/cpu_numerics.py",
        "    if here in verified:",
        "    if verified:",
        ("tests/test_verified_on.py",),
    ),
    Mutation(
        "re-verification: stored pairs below the recorded agreement are refused",
        "dit_deploy/runtime/verified_on.py",
        "    if got < wanted:",
        "    if got < wanted - 1.0:",
        ("tests/test_verified_on.py",),
    ),
    Mutation(
        "int8: 7-bit weights (no 16-bit overflow without VNNI)",
        "dit_deploy/precision/int8.py",
        "reduce_range=options.weight_bits == 7,",
        "reduce_range=False,",
        ("tests/test_verified_on.py",),
    ),
    Mutation(
        "int8: activation second operands widened to the weights' range",
        "dit_deploy/precision/int8.py",
        "    widen_activation_operands(model, options.weight_levels)\n",
        "",
        ("tests/test_verified_on.py",),
    ),
)


def run(mutation: Mutation, python: str) -> tuple[bool, float]:
    """Apply, test, restore. True if the tests failed (the mutation was killed)."""
    path = ROOT / mutation.file
    source = path.read_text()
    if source.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the snippet is not found exactly once in {path}")
    start = time.perf_counter()
    try:
        path.write_text(source.replace(mutation.old, mutation.new))
        proc = subprocess.run(
            [
                python,
                "-m",
                "pytest",
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
                "-k",
                FAST,
                *mutation.tests,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(source)
    return proc.returncode != 0, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-k", default="", help="only mutations whose name contains this text")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--python", default=sys.executable, help="interpreter with the test deps")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name:<48} {m.file}")
        return 0
    survivors = []
    for m in chosen:
        killed, seconds = run(m, args.python)
        print(f"{'killed  ' if killed else 'SURVIVED'} {m.name:<48} {seconds:6.1f} s", flush=True)
        if not killed:
            survivors.append(m.name)
    print(f"{len(chosen) - len(survivors)}/{len(chosen)} killed; survivors: {survivors or 'none'}")
    return len(survivors)


if __name__ == "__main__":
    raise SystemExit(main())
