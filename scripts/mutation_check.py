"""Switch each guard off, run the tests that should notice, and report the survivors.

    .venv/bin/python scripts/mutation_check.py            # every mutation (~5-10 min, 2 cores)
    .venv/bin/python scripts/mutation_check.py --list     # what would be mutated
    .venv/bin/python scripts/mutation_check.py -k hash    # mutations whose name contains "hash"

A mutation replaces one exact snippet of source with a broken version (the file is restored
afterwards, also on Ctrl-C). Its tests run unmutated first (once per test list): a red
baseline stops the script. It is "killed" only when a listed test fails (pytest exit 1; the
killing test is printed), "survived" when they pass (the guard is not proven by any test),
and an "error" when pytest cannot run them (exit 2/4/5: collection or usage), which counts
as not killed. Exit code: the number of mutations not killed.
"""

from __future__ import annotations

import argparse
import os
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
        ("tests/test_reliability.py::test_manifest_errors_name_file_field_and_expectation",),
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
        "precision floor: NaN/inf logits",
        "dit_deploy/precision/verify.py",
        "        if not np.isfinite(self.logits_max_abs):",
        "        if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "precision floor: max logit error",
        "dit_deploy/precision/verify.py",
        "if floor.max_logit_error is not None and self.logits_rel_error > floor.max_logit_error:",
        "if False:",
        ("tests/test_guards.py", "tests/test_precision_auto.py"),
    ),
    Mutation(
        "export validation: max |difference| gate",
        "dit_deploy/exporters/validate.py",
        "close = self.max_abs <= self.limit",
        "close = True",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "int8 checker: no Q/DQ at all",
        "dit_deploy/precision/graph_checks.py",
        'if not ops["QuantizeLinear"] or not ops["DequantizeLinear"]:',
        "if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "int8 checker: zero point type",
        "dit_deploy/precision/graph_checks.py",
        "        if zp.data_type != TensorProto.INT8:",
        "        if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "int8 checker: INT32 bias dequantisation",
        "dit_deploy/precision/graph_checks.py",
        "        if weight.data_type == TensorProto.INT32:",
        "        if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "int8 checker: per-tensor weight scale",
        "dit_deploy/precision/graph_checks.py",
        "            if not per_channel:",
        "            if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "fp16 checker: FP16 graph inputs/outputs",
        "dit_deploy/precision/graph_checks.py",
        '        if elem == TensorProto.FLOAT16:\n            problems.append(f"graph input/output',
        '        if False:\n            problems.append(f"graph input/output',
        ("tests/test_guards.py",),
    ),
    Mutation(
        "fp16 checker: a conversion that did nothing",
        "dit_deploy/precision/graph_checks.py",
        "    if TensorProto.FLOAT16 not in set(types.values()) | set(inits.values()):",
        "    if False:",
        ("tests/test_guards.py",),
    ),
    Mutation(
        "engine sidecar: another TensorRT version",
        "dit_deploy/runtime/engine_sidecar.py",
        "        elif b != r:",
        "        elif False:",
        ("tests/test_engine_sidecar.py",),
    ),
    Mutation(
        "engine sidecar: another compute capability",
        "dit_deploy/runtime/engine_sidecar.py",
        "        elif _cc(compute_capability) != _cc(sidecar.compute_capability):",
        "        elif False:",
        ("tests/test_engine_sidecar.py",),
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
        "triton tensorrt repository: every engine output declared",
        "dit_deploy/serving/triton_repo.py",
        "for t in sidecar.outputs]",
        'for t in sidecar.outputs if t.name == "low_res_logits"]',
        ("tests/test_serving.py::test_every_config_parses_against_tritons_model_config",),
    ),
    Mutation(
        "C++ ORT TensorRT options: an option missing from the shared table",
        "cpp/src/ort_options.cpp",
        '      {"trt_int8_enable", precision == "int8" ? "1" : "0"},\n',
        "",
        ("tests/test_cpp_runtime.py::test_ctest_suite",),
    ),
    Mutation(
        "C++ device strings: the shared rule",
        "cpp/src/devices.hpp",
        'ok = ok && out.kind != "cpu" && !index.empty()',
        "ok = ok && !index.empty()",
        ("tests/test_cpp_runtime.py::test_ctest_suite",),
    ),
    Mutation(
        "GPU tests: a skip before the boundary is a failure",
        "tests/gpu_boundary.py",
        "        if BOUNDARY not in reason and not declared:",
        "        if False:",
        ("tests/test_gpu_boundary.py",),
    ),
    Mutation(
        "ONNX Runtime GPU providers: the loading step",
        "dit_deploy/runtime/backends/onnxruntime.py",
        "            ort.preload_dlls()\n",
        "            pass\n",
        ("tests/test_gpu_loading.py::test_our_loading_step_makes_both_providers_load",),
    ),
    Mutation(
        "C++ ONNX Runtime GPU providers: the loading step",
        "cpp/src/gpu_libraries.cpp",
        "  if (site_packages.empty() || !fs::is_directory(root, ec)) return out;",
        "  return out;",
        (
            "tests/test_gpu_loading.py::test_the_cpp_runtime_loading_step_leaves_only_the_driver_missing",
        ),
    ),
    Mutation(
        "C++ install: ONNX Runtime's provider libraries beside the linked libonnxruntime",
        "scripts/link_onnxruntime.sh",
        '  [ -e "$provider" ] && ln -sfn "$provider" "$LIBDIR/$(basename "$provider")"\n',
        "  :\n",
        (
            "tests/test_gpu_loading.py::test_the_cpp_runtime_loading_step_leaves_only_the_driver_missing",
        ),
    ),
    Mutation(
        "C++ TensorRT buffers: a failed allocation leaves no reservation",
        "cpp/src/device_buffer.hpp",
        "    bytes_ = 0;\n  }",
        "  }",
        ("tests/test_cpp_runtime.py::test_ctest_suite",),
    ),
    Mutation(
        "int8: pair-bounded weights (no 16-bit overflow without VNNI)",
        "dit_deploy/precision/int8.py",
        "        bound_weight_pairs(model, onnx.load(str(graph)))\n",
        "        pass\n",
        ("tests/test_verified_on.py",),
    ),
    Mutation(
        "int8: pairs bounded along K, not along the output channels",
        "dit_deploy/precision/int8.py",
        "    wk = np.moveaxis(np.asarray(w, np.float64), k_axis, 0)  # (K, N)",
        "    wk = np.moveaxis(np.asarray(w, np.float64), 1 - k_axis, 0)  # (K, N)",
        (
            "tests/test_precision_smooth.py::test_pair_bounded_weights_keep_every_adjacent_pair_within_the_int16_budget",
        ),
    ),
    Mutation(
        "int8: activation second operands widened to the weights' range",
        "dit_deploy/precision/int8.py",
        "    widen_activation_operands(model, options.weight_levels)\n",
        "",
        ("tests/test_verified_on.py",),
    ),
    Mutation(
        "export: a manifest rewritten by another process is read again",
        "dit_deploy/runtime/export.py",
        "if cached is not None and cached[0] == stamp:",
        "if cached is not None:",
        ("tests/test_export_object.py",),
    ),
    Mutation(
        "export: a cached export still checks its files",
        "dit_deploy/runtime/export.py",
        "                check_files(path, cached[1].manifest)",
        "                pass",
        ("tests/test_export_object.py",),
    ),
    Mutation(
        "backend table: a row's devices",
        "dit_deploy/runtime/backends/table.py",
        "        if kind not in self.devices:",
        "        if False:",
        ("tests/test_backend_table.py",),
    ),
    Mutation(
        "backend table: an execution precision goes to its backend's mode",
        "dit_deploy/runtime/predictor.py",
        "            execution=mode,",
        '            execution="",',
        ("tests/test_backend_table.py",),
    ),
    Mutation(
        "atomic writes: the mode open gives",
        "dit_deploy/atomic.py",
        "        os.fchmod(fd, 0o666 & ~umask())\n",
        "",
        (
            "tests/test_reliability.py::test_atomic_writes_and_work_dirs_get_the_modes_open_and_mkdir_give",
        ),
    ),
    Mutation(
        "throughput plan: a plan for another machine or export is used",
        "dit_deploy/runtime/throughput.py",
        "    stale = [k for k, v in key.items() if plan.get(k) != v]",
        "    stale = []",
        ("tests/test_throughput.py",),
    ),
    Mutation(
        "throughput plan: the best candidate is chosen",
        "dit_deploy/runtime/throughput.py",
        'chosen = max(table, key=lambda row: row["pairs_per_s"])',
        "chosen = table[0]",
        ("tests/test_throughput.py",),
    ),
    Mutation(
        "int8: the mask decoder's attention stays FP32",
        "dit_deploy/precision/pipeline.py",
        "*decoder_attention_matmuls(graph, role))",
        ")",
        ("tests/test_precision.py::test_int8_graph_properties",),
    ),
    Mutation(
        "int8 --auto: the fused graph's FLOP share counts every product",
        "dit_deploy/precision/sensitivity.py",
        "                if FUSED_PREFIX[r] + name in products\n",
        "                if (r, name) in twins\n",
        ("tests/test_layout_alias.py",),
    ),
    Mutation(
        "serving: the budget is the request's, not each image's",
        "dit_deploy/serving/triton_models.py",
        "    if over:\n        return pb.TritonError(over, pb.TritonError.INVALID_ARG)",
        "    if False:\n        return pb.TritonError(over, pb.TritonError.INVALID_ARG)",
        ("tests/test_serving_unit.py::test_pipeline_budget_is_per_request_not_per_image",),
    ),
    Mutation(
        "images: only the listed raster formats are opened",
        "dit_deploy/preprocess.py",
        "        im = Image.open(path, formats=IMAGE_FORMATS)",
        "        im = Image.open(path)",
        ("tests/test_preprocess.py::test_only_the_listed_raster_formats_are_opened",),
    ),
    Mutation(
        "manifest: files outside the export are refused",
        "dit_deploy/runtime/manifest.py",
        '    if not name or "/" in name',
        "    if not name",
        ("tests/test_cli.py::test_a_manifest_naming_files_outside_its_export_is_refused",),
    ),
    Mutation(
        "validate: the recorded hashes are checked first",
        "dit_deploy/exporters/cli.py",
        '        export.verify(export.roles(layout), "fp32")',
        "        pass",
        ("tests/test_cli.py::test_validate_checks_the_recorded_hashes_before_it_runs",),
    ),
    Mutation(
        "Predictor: every graph open re-checks its hash",
        "dit_deploy/runtime/predictor.py",
        "        if self._verify:  # every open",
        "        if False:  # every open",
        ("tests/test_api_boundary.py::test_a_reopen_after_close_checks_the_hashes_again",),
    ),
    Mutation(
        "manifest: an unrecorded hash is an error",
        "dit_deploy/runtime/manifest.py",
        "    if not recorded:\n        raise ArtifactError(",
        "    if not recorded:\n        return\n        raise ArtifactError(",
        ("tests/test_api_boundary.py",),
    ),
    Mutation(
        "serve: dead servers' shared memory is removed",
        "dit_deploy/serving/server.py",
        "        if own if mine else not _alive(int(pid)):",
        "        if own and mine:",
        (
            "tests/test_serving_unit.py::test_stale_shared_memory_of_dead_serve_processes_is_removed",
        ),
    ),
    Mutation(
        "demo: a malformed form is a 400",
        "dit_deploy/demo.py",
        "            except (ValueError, LookupError) as exc:",
        "            except KeyError as exc:",
        (
            "tests/test_demo.py::test_the_api_answers_every_malformed_request_with_400_and_keeps_serving",
        ),
    ),
)


def _pytest(python: str, tests: tuple[str, ...]) -> tuple[int, set[str]]:
    """Run ``tests`` (stopping at the first failure); (exit code, the failed test ids)."""
    proc = subprocess.run(
        [python, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "-k", FAST, *tests],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "1000"},  # summary lines are cut to the terminal width
    )
    failed = {  # "FAILED tests/x.py::test[id with spaces] - AssertionError: ..."
        line[len("FAILED ") :].split(" - ", 1)[0]
        for line in proc.stdout.splitlines()
        if line.startswith("FAILED ")
    }
    return proc.returncode, failed


def run(mutation: Mutation, python: str, baseline: dict[tuple[str, ...], bool]) -> Result:
    """Apply, test, restore. Killed only by a test failure (pytest exit 1) that the unmutated
    source does not have; a collection or usage error (exit 2, 4, 5) is not a kill."""
    path = ROOT / mutation.file
    source = path.read_text()
    if source.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the snippet is not found exactly once in {path}")
    if mutation.tests not in baseline:
        code, failed = _pytest(python, mutation.tests)
        if code != 0:
            raise SystemExit(
                f"{mutation.name}: its tests fail unmutated (exit {code}, {sorted(failed)}); "
                "a red baseline cannot prove a guard: fix the suite first"
            )
        baseline[mutation.tests] = True
    start = time.perf_counter()
    try:
        path.write_text(source.replace(mutation.old, mutation.new))
        code, failed = _pytest(python, mutation.tests)
    finally:
        path.write_text(source)
    seconds = time.perf_counter() - start
    if code == 1 and failed:
        return Result("killed", seconds, sorted(failed)[0])
    if code == 0:
        return Result("survived", seconds, "")
    return Result("error", seconds, f"pytest exit {code} (not a test failure)")


@dataclass(frozen=True)
class Result:
    verdict: str  # killed, survived, error
    seconds: float
    by: str  # the test that killed it, or why it is an error


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
    baseline: dict[tuple[str, ...], bool] = {}
    for m in chosen:
        r = run(m, args.python, baseline)
        print(f"{r.verdict.upper():<8} {m.name:<48} {r.seconds:6.1f} s  {r.by}", flush=True)
        if r.verdict != "killed":
            survivors.append(m.name)
    print(f"{len(chosen) - len(survivors)}/{len(chosen)} killed; survivors: {survivors or 'none'}")
    return len(survivors)


if __name__ == "__main__":
    raise SystemExit(main())
