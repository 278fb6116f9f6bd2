"""The fused graph's nodes are the split graphs' nodes: INT8 --auto measures each node's
sensitivity once and tries the split layout's plan on the fused graph before searching it."""

from __future__ import annotations

import onnx
import pytest

from dit_deploy.precision.int8 import DEFAULT_OP_TYPES
from dit_deploy.precision.layout_alias import FUSED_PREFIX, fused_twins
from dit_deploy.precision.pipeline import run_quantize
from dit_deploy.precision.sensitivity import quantized_nodes
from dit_deploy.precision.verify import Floor
from dit_deploy.runtime.manifest import read_manifest
from tests.conftest import copy_export
from tests.test_precision_auto import _options


def _compute_nodes(path) -> list[str]:
    model = onnx.load(path, load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in DEFAULT_OP_TYPES]


def test_every_split_node_has_its_fused_twin_and_a_missing_one_is_noticed(tiny_export):
    files = read_manifest(tiny_export).graph_files(tiny_export)
    split = {role: _compute_nodes(files[role]) for role in FUSED_PREFIX}
    fused = _compute_nodes(files["dit_fused"])
    twins = fused_twins(split, fused)
    assert twins is not None and len(twins) == len(fused) == sum(map(len, split.values()))
    assert twins[("text_encoder", split["text_encoder"][0])].startswith("/text/")
    assert fused_twins(split, fused[1:]) is None  # a split node without its twin
    assert fused_twins(split, [*fused, "/extra/MatMul"]) is None  # a fused node left over
    assert fused_twins({r: split[r] for r in ("dit_encoder", "mask_decoder")}, fused) is None


def test_int8_auto_measures_each_node_once_and_gives_the_fused_graph_the_split_plan(
    tiny_export, tmp_path
):
    out = copy_export(tiny_export, tmp_path / "e")
    floor = Floor(min_mask_iou=0.985, max_miou_drop=0.5)
    opts = _options("int8", tmp_path / "c", auto=True, floor=floor)
    opts.search = opts.eval
    lines: list[str] = []
    result = run_quantize(out, opts, log=lines.append)
    assert result.written and all(r.ok for r in result.layouts)
    assert "dit_fused: sensitivities of its nodes' twins in the split graphs" in lines
    assert not any(line.startswith("dit_fused: sensitivity ") for line in lines)
    plan = result.plan
    split_kept = {FUSED_PREFIX[r] + k.node for r in FUSED_PREFIX for k in plan.roles[r].kept}
    assert split_kept, "the gates should need some FP32 nodes on the tiny model"
    tried = [line for line in lines if "(the split layout's nodes)" in line]
    assert len(tried) == 1
    if tried[0].endswith(" ok"):  # passed on the fused graph: no search of its own
        assert set(plan.roles["dit_fused"].nodes) == split_kept
        assert not any(line.startswith("int8 fused (prefix)") for line in lines)
    fused = onnx.load(out / read_manifest(out).graph("dit_fused", "int8").file)
    assert set(plan.roles["dit_fused"].nodes).isdisjoint(quantized_nodes(fused))
    # its share of the FLOPs counts every product, INT8 or not: the split graphs' FLOPs
    split_total = sum(plan.roles[r].total_flops for r in FUSED_PREFIX)
    assert plan.roles["dit_fused"].total_flops == pytest.approx(split_total, rel=1e-9)
