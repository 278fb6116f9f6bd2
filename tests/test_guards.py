"""Every checker and gate is fed a deliberately broken input and must refuse it.

A guard that only ever sees good input can be switched off without a test failing; these
tests are what makes each one proven (see scripts/mutation_check.py).
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dit_deploy.exporters.validate import Tolerance, compare_outputs  # noqa: E402
from dit_deploy.precision.graph_checks import fp16_problems, int8_problems  # noqa: E402
from dit_deploy.precision.verify import Floor, LayoutReport  # noqa: E402


def _int8_graph(
    zp_value: int = 0,
    zp_type: int = TensorProto.INT8,
    per_channel: bool = True,
    axis: int = 1,
    weight_type: int = TensorProto.INT8,
    with_qdq: bool = True,
):
    """x (FP32) -> Q/DQ -> MatMul with a DQ'd (4, 3) weight -> y."""
    scale_w = np.full(3 if per_channel else (), 0.1, np.float32)
    inits = [
        numpy_helper.from_array(np.ones((4, 3), np.int8), "w_q"),
        numpy_helper.from_array(scale_w, "w_scale"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
    ]
    zp_np = np.array(zp_value, dtype=np.int8 if zp_type == TensorProto.INT8 else np.uint8)
    if per_channel:
        zp_np = np.full(3, zp_value, zp_np.dtype)
    inits.append(numpy_helper.from_array(zp_np, "w_zp"))
    inits.append(numpy_helper.from_array(np.array(zp_value, zp_np.dtype), "x_zp"))
    if weight_type == TensorProto.INT32:
        inits[0] = numpy_helper.from_array(np.ones((4, 3), np.int32), "w_q")
    nodes = []
    x = "x"
    if with_qdq:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
            helper.make_node(
                "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=axis
            ),
        ]
        x = "xd"
    else:
        inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")]
    nodes.append(helper.make_node("MatMul", [x, "w"], ["y"], name="mm"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    return helper.make_model(graph)


def test_int8_checker_accepts_the_form_tensorrt_takes():
    assert int8_problems(_int8_graph()) == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"zp_value": 3}, "non-zero zero point"),
        ({"zp_type": TensorProto.UINT8}, "zero point type UINT8"),
        ({"per_channel": False}, "per-tensor weight scale for mm"),
        ({"axis": 0}, "per-channel axis 0 for MatMul mm, expected the output-channel axis 1"),
        ({"weight_type": TensorProto.INT32}, "INT32 (bias) dequantisation"),
        ({"with_qdq": False}, "not quantized"),
    ],
)
def test_int8_checker_refuses_each_broken_form(kwargs, expected):
    problems = int8_problems(_int8_graph(**kwargs))
    assert any(expected in p for p in problems), problems


def _fp16_graph(ln_input_fp16: bool, io_fp16: bool = False, any_fp16: bool = True):
    io = TensorProto.FLOAT16 if io_fp16 else TensorProto.FLOAT
    half = TensorProto.FLOAT16 if any_fp16 else TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=half, name="to_half"),
        helper.make_node("Relu", ["xh"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["r32"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node(
            "LayerNormalization", ["r" if ln_input_fp16 else "r32", "g", "b"], ["y"], name="ln"
        ),
    ]
    dtype = np.float16 if ln_input_fp16 else np.float32
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", io, [2, 4])],
        [helper.make_tensor_value_info("y", io, [2, 4])],
        [
            numpy_helper.from_array(np.ones(4, dtype), "g"),
            numpy_helper.from_array(np.zeros(4, dtype), "b"),
        ],
        value_info=[
            helper.make_tensor_value_info("xh", half, [2, 4]),
            helper.make_tensor_value_info("r", half, [2, 4]),
            helper.make_tensor_value_info("r32", TensorProto.FLOAT, [2, 4]),
        ],
    )
    return helper.make_model(graph)


def test_fp16_checker_accepts_fp32_islands_and_refuses_each_broken_form():
    ops = ("LayerNormalization",)
    assert fp16_problems(_fp16_graph(False), ops) == []
    assert any("ln computes in FP16" in p for p in fp16_problems(_fp16_graph(True), ops))
    assert any("is FP16; keep I/O" in p for p in fp16_problems(_fp16_graph(False, True), ops))
    none = fp16_problems(_fp16_graph(False, any_fp16=False), ops)
    assert any("conversion did nothing" in p for p in none)


def _report(**kw) -> LayoutReport:
    base = dict(
        layout="fused",
        pairs=8,
        logits_max_abs=0.01,
        logits_mean_abs=0.001,
        logits_ref_max=10.0,
        mask_iou=0.995,
        mask_iou_mean=0.99,
        miou_fp32=0.60,
        miou=0.60,
        oiou_fp32=0.6,
        oiou=0.6,
    )
    return LayoutReport(**{**base, **kw})


def test_precision_floor_refuses_each_gate_alone():
    floor = Floor(min_mask_iou=0.99, max_miou_drop=0.002)
    assert _report().check(floor).ok
    drop = _report(miou=0.597).check(floor)  # 0.3 points > 0.2 allowed; masks fine
    assert not drop.ok and len(drop.failures) == 1 and "mIoU falls 0.30 points" in drop.failures[0]
    agree = _report(mask_iou=0.98).check(floor)
    assert not agree.ok and "mask agreement 0.9800" in agree.failures[0]
    nan = _report(logits_max_abs=float("inf")).check(floor)
    assert not nan.ok and "not finite" in nan.failures[0]
    assert _report(miou=0.61).check(floor).ok  # an improvement is not a drop


def test_export_validation_mask_gate_fails_when_only_the_masks_differ():
    ref = np.full((1, 1, 8, 8), -1.0, np.float32)
    ref[..., :4] = 1.0
    got = ref.copy()
    got[..., 4] = 0.2  # a column crosses the 0.35-probability threshold (logit -0.62)
    loose = Tolerance(atol=10.0, rtol=0.0, min_mask_iou=0.999)  # values within tolerance
    (check,) = compare_outputs({"low_res_logits": got}, {"low_res_logits": ref}, loose, 0.35)
    assert check.max_abs <= check.limit
    assert check.mask_iou is not None and check.mask_iou < 0.999 and not check.ok
    (same,) = compare_outputs({"low_res_logits": ref}, {"low_res_logits": ref}, loose, 0.35)
    assert same.ok and same.mask_iou == 1.0


def test_export_validation_value_gate_fails_when_only_the_values_differ():
    """The other gate alone: masks identical, one output value beyond the tolerance."""
    ref = np.full((1, 1, 8, 8), -4.0, np.float32)
    ref[..., :4] = 4.0
    got = ref.copy()
    got[0, 0, 0, 0] = 4.5  # still foreground: the masks agree, the value does not
    strict = Tolerance(atol=1e-3, rtol=0.0, min_mask_iou=0.999)
    (check,) = compare_outputs({"low_res_logits": got}, {"low_res_logits": ref}, strict, 0.35)
    assert check.mask_iou == 1.0 and check.max_abs == pytest.approx(0.5)
    assert check.max_abs > check.limit and not check.ok
    (iou,) = compare_outputs({"iou_pred": got[0, 0, :1, :1]}, {"iou_pred": ref[0, 0, :1, :1]},
                             strict, 0.35)  # fmt: skip
    assert iou.mask_iou is None and not iou.ok  # an output without masks: the value gate alone


def test_postprocess_with_a_left_offset_equals_opencv_crop_and_resize():
    """A tall image: the letterbox pads left and right (left > 0)."""
    cv2 = pytest.importorskip("cv2")
    from dit_deploy.postprocess import logits_to_mask, sigmoid
    from dit_deploy.preprocess import letterbox

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (90, 37, 3), dtype=np.uint8)
    _, lb = letterbox(image, 64)
    assert lb.left > 0 and lb.top == 0
    logits = rng.normal(0, 2, (64, 64)).astype(np.float32)
    got = logits_to_mask(logits, lb, threshold=0.35)
    binary = (sigmoid(logits) > 0.35).astype(np.float32)
    crop = binary[lb.top : lb.top + lb.new_h, lb.left : lb.left + lb.new_w]
    want = cv2.resize(crop, (lb.orig_w, lb.orig_h), interpolation=cv2.INTER_LINEAR) > 0
    assert got.mask.shape == (90, 37)
    assert np.array_equal(got.mask, want)


def test_the_manifest_threshold_drives_the_runtime(tmp_path):
    """An export whose threshold is not the default 0.35: the masks follow the manifest."""
    pytest.importorskip("torch")
    from conftest import AUTHORS, FIXTURES

    from dit_deploy.exporters.onnx_export import run_export
    from dit_deploy.model.config import get_config
    from dit_deploy.model.dit_model import DITModel
    from dit_deploy.postprocess import postprocess_batch
    from dit_deploy.runtime import Predictor

    config = get_config("layer_wise_tiny", mask_threshold=0.6)
    model = DITModel.from_checkpoint(
        AUTHORS / "layer_wise.pth", config=config, vocab=FIXTURES / "tiny_vocab.txt"
    )
    out = run_export(model, tmp_path / "t", layout="fused", log=lambda *_: None).out_dir
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    with Predictor(out) as p:
        assert p.manifest.mask_threshold == 0.6
        result = p.predict(image, "the cat")
        feeds, boxes = p.prepare([image], ["the cat"])
        logits = p.low_res_logits(feeds)
    at_06 = postprocess_batch(logits, boxes, 0.6)[0].mask
    at_035 = postprocess_batch(logits, boxes, 0.35)[0].mask
    assert not np.array_equal(at_06, at_035)  # the two thresholds really differ here
    assert np.array_equal(result.mask, at_06)
