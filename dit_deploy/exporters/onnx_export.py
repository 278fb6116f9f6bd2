"""PyTorch -> ONNX: split (text encoder, DIT encoder, mask decoder) or fused graphs.

``run_export`` is the function (tests call it); ``export/to_onnx.py`` is its CLI.
Nothing is written to the output directory unless every graph validates.
"""

from __future__ import annotations

import shutil
import time
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..artifact_dir import recover, swap_in, work_dir
from ..errors import ArtifactError, ConfigError
from ..hashing import sha256_file
from ..model.checkpoint import VOCAB_FILE
from ..model.dit_model import DITModel
from ..preprocess import ImageSource
from ..runtime.export import Export
from ..runtime.graph_chain import LOGITS, GraphChain
from ..runtime.manifest import (
    LAYOUT_ROLES,
    GraphSpec,
    Manifest,
    TensorSpec,
)
from .onnx_io import save_onnx
from .validate import OutputCheck, Tolerance, compare_outputs, raise_on_failures
from .wrappers import DecoderForExport, EncoderForExport, FusedForExport, TextEncoderForExport

DEFAULT_OPSET = 17
LAYOUTS = {**LAYOUT_ROLES, "both": tuple(r for roles in LAYOUT_ROLES.values() for r in roles)}
MIN_OPSET, MAX_OPSET = 17, 20


@dataclass(frozen=True)
class GraphInfo:
    role: str
    file: str
    seconds: float
    size_bytes: int
    op_counts: dict[str, int]

    def line(self) -> str:
        top = ", ".join(
            f"{op} {n}" for op, n in sorted(self.op_counts.items(), key=lambda x: -x[1])[:6]
        )
        return (
            f"{self.role:<13} {self.file:<18} {self.seconds:6.1f} s "
            f"{self.size_bytes / 1e6:8.2f} MB  {sum(self.op_counts.values())} ops ({top})"
        )


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Manifest
    graphs: list[GraphInfo] = field(default_factory=list)
    checks: list[OutputCheck] = field(default_factory=list)


def _graph_io(model: DITModel) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Names, dtypes and shapes of every graph's inputs/outputs: declared once, here."""
    c = model.config
    s, g, lo = c.input_size, c.grid_size, c.grid_size * 4
    L, D, C = c.max_tokens, c.text_encoder.hidden_size, c.encoder.out_chans
    ids = TensorSpec("input_ids", "int64", ["batch", L])
    mask = TensorSpec("attention_mask", "int64", ["batch", L])
    image = TensorSpec("image", "float32", ["batch", 3, s, s])
    text = TensorSpec("text_features", "float32", ["batch", L, D])
    emb = TensorSpec("image_embedding", "float32", ["batch", C, g, g])
    logits = TensorSpec("low_res_logits", "float32", ["batch", 1, lo, lo])
    iou = TensorSpec("iou_pred", "float32", ["batch", 1])
    return {
        "text_encoder": ([ids, mask], [text]),
        "dit_encoder": ([image, text], [emb]),
        "mask_decoder": ([emb, text], [logits, iou]),
        "dit_fused": ([ids, mask, image], [logits, iou]),
    }


def _wrapper(role: str, model: DITModel) -> torch.nn.Module:
    net = model.network
    return {
        "text_encoder": TextEncoderForExport,
        "dit_encoder": EncoderForExport,
        "mask_decoder": DecoderForExport,
        "dit_fused": FusedForExport,
    }[role](net).eval()


def _example(spec: TensorSpec, batch: int, vocab_size: int) -> torch.Tensor:
    shape = [batch if d == "batch" else d for d in spec.shape]
    if spec.dtype == "int64":
        return (
            torch.randint(1, vocab_size, shape)
            if spec.name == "input_ids"
            else torch.ones(shape, dtype=torch.int64)
        )
    return torch.randn(shape)


def _dedupe_value_info(graph) -> None:
    """Keep one ``value_info`` per tensor (slimming + inference can repeat them, which
    trips downstream tools such as the FP16 converter)."""
    seen, unique = set(), []
    for info in graph.value_info:
        if info.name not in seen:
            seen.add(info.name)
            unique.append(info)
    del graph.value_info[:]
    graph.value_info.extend(unique)


def export_graph(
    module: torch.nn.Module,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    path: Path,
    opset: int,
    metadata: dict[str, str],
    vocab_size: int,
) -> dict[str, int]:
    """Trace ``module`` to ``path`` (batch dynamic), slim, check, stamp metadata; op counts."""
    import onnx
    import onnxslim

    # trace with batch 2: a batch-1 trace can specialise reshapes to batch 1
    args = tuple(_example(s, 2, vocab_size) for s in inputs)
    dynamic = {s.name: {0: "batch"} for s in [*inputs, *outputs]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (dynamo=False): it gives the graphs
        # every parity test and the FP16/INT8 passes were proven on. Its deprecation notice,
        # and the TracerWarning on SAM's `attn / math.sqrt(c_per_head)` (a Python float that
        # is the same constant for every input), say nothing the user can act on; filtered
        # here only, for this call only.
        for notice in ("You are using the legacy TorchScript", "The feature will be removed"):
            warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = onnxslim.slim(onnx.load(str(path)))
    graph = onnx.shape_inference.infer_shapes(graph)
    _dedupe_value_info(graph.graph)
    del graph.metadata_props[:]
    for key, value in sorted(metadata.items()):
        graph.metadata_props.add(key=key, value=value)
    save_onnx(graph, path)
    onnx.checker.check_model(str(path), full_check=True)
    return dict(Counter(node.op_type for node in graph.graph.node))


def default_validation_pairs(size: int = 160) -> list[tuple[np.ndarray, str]]:
    """Real (image, expression) pairs from the synthetic generator; shapes vary on purpose."""
    from ..data.synthetic import make_scene

    pairs = []
    for i, crop in enumerate([(size, size), (size, size * 3 // 4), (size * 5 // 8, size)]):
        scene = make_scene(seed=1234, split="val", index=i, size=size)
        pairs.append((scene.image[: crop[0], : crop[1]], scene.expressions[0][2]))
    return pairs


def torch_reference(model: DITModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every stage's output from the PyTorch model, as users run it."""
    net = model.network
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.inference_mode():
        text = net.encode_text(t["input_ids"], t["attention_mask"])
        emb = net.encode_image(t["image"], text)
        out = net.decode(emb, text)
    return {
        "text_features": text.numpy(),
        "image_embedding": emb.numpy(),
        "low_res_logits": out.low_res_logits.numpy(),
        "iou_pred": out.iou_pred.numpy(),
    }


def validate_directory(
    export_dir: Path,
    manifest: Manifest,
    model: DITModel,
    pairs: Sequence[tuple[ImageSource, str]],
    tol: Tolerance,
) -> list[OutputCheck]:
    """Run every graph in ONNX Runtime (CPU) against PyTorch on the same real inputs."""
    images, texts = zip(*pairs, strict=True)
    feeds, _ = model.prepare(images, texts)
    ref = torch_reference(model, feeds)
    thr = manifest.mask_threshold
    checks: list[OutputCheck] = []
    for layout in manifest.layouts:
        with GraphChain.from_files(layout, manifest.graph_files(export_dir)) as chain:
            # each graph alone, on the reference's own inputs
            for role in chain.roles:
                got = chain.run_role(role, {**feeds, **ref})
                want = {name: ref[name] for name in got}
                checks += compare_outputs(got, want, tol, thr, f"{role}.")
            if len(chain.roles) > 1:
                # the whole chain, errors compounding as they will at run time
                logits = {LOGITS: chain.logits(feeds)}
                checks += compare_outputs(
                    logits, {LOGITS: ref[LOGITS]}, tol, thr, f"{layout}_chain."
                )
    return checks


def build_manifest(model: DITModel, roles: Sequence[str], opset: int, source: dict) -> Manifest:
    import onnx
    import onnxruntime
    import transformers

    c = model.config
    io = _graph_io(model)
    return Manifest(
        config_name=c.name,
        variant=c.variant,
        input_size=c.input_size,
        max_tokens=c.max_tokens,
        mask_threshold=c.mask_threshold,
        pixel_mean=list(c.pixel_mean),
        pixel_std=list(c.pixel_std),
        tokenizer={
            "vocab_file": VOCAB_FILE,
            "lowercase": c.text_encoder.lowercase,
            "max_tokens": c.max_tokens,
            "sha256": sha256_file(model.vocab_file),
            # the Unicode data the tokenizer classified characters with (C++ must agree)
            "unicode_version": unicodedata.unidata_version,
        },
        graphs={r: GraphSpec(file=f"{r}.onnx", inputs=io[r][0], outputs=io[r][1]) for r in roles},
        config=c.to_dict(),
        versions={
            "dit_deploy": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__,
        },
        source=source,
        opset=opset,
    )


def run_export(
    model: DITModel,
    out_dir: str | Path,
    layout: str = "split",
    opset: int = DEFAULT_OPSET,
    tolerance: Tolerance | None = None,
    pairs: Sequence[tuple[ImageSource, str]] | None = None,
    source: dict | None = None,
    overwrite: bool = False,
    log=print,
) -> ExportResult:
    """Export, validate against PyTorch, and only then move the directory into place."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if model.vocab_file is None or not Path(model.vocab_file).is_file():
        raise ArtifactError("the model has no tokenizer vocabulary file to ship with the export")
    out_dir = Path(out_dir)
    recover(out_dir, log)
    if out_dir.exists() and not overwrite:
        raise ArtifactError(
            f"{out_dir} exists; pass --overwrite (Python: overwrite=True) to replace it"
        )
    tol = tolerance or Tolerance()
    pairs = list(pairs) if pairs is not None else default_validation_pairs()
    roles = LAYOUTS[layout]
    model.network.eval()
    manifest = build_manifest(model, roles, opset, source or {})
    tmp = work_dir(out_dir, "export")
    try:
        result = ExportResult(out_dir, manifest)
        io = _graph_io(model)
        previous_sdpa = model.network.visual_encoder.use_sdpa
        model.network.visual_encoder.use_sdpa = False  # plain MatMul/Softmax in the graph
        try:
            for role in roles:
                start = time.perf_counter()
                path = tmp / f"{role}.onnx"
                ops = export_graph(
                    _wrapper(role, model),
                    *io[role],
                    path,
                    opset,
                    manifest.metadata_props() | {"dit.graph": role},
                    model.config.text_encoder.vocab_size,
                )
                info = GraphInfo(
                    role, path.name, time.perf_counter() - start, path.stat().st_size, ops
                )
                result.graphs.append(info)
                log(info.line())
        finally:
            model.network.visual_encoder.use_sdpa = previous_sdpa
        graphs = {
            r: GraphSpec(g.file, g.inputs, g.outputs, sha256_file(tmp / g.file), g.precision)
            for r, g in manifest.graphs.items()
        }
        manifest = Manifest(**{**manifest.__dict__, "graphs": graphs})
        result.manifest = manifest
        shutil.copyfile(model.vocab_file, tmp / VOCAB_FILE)
        manifest.write(tmp)
        result.checks = validate_directory(tmp, manifest, model, pairs, tol)
        for check in result.checks:
            log(check.line())
        raise_on_failures(result.checks, f"export to {out_dir} not written")
        swap_in(tmp, out_dir)
        Export.written(out_dir, manifest)  # this process's later opens need not re-read it
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def export_pretrained(name_or_dir: str | Path, out_dir: str | Path, log=print) -> bool:
    """Export a model in our format (both layouts) unless ``out_dir`` already holds a valid
    export of the same weights (sha256 in the manifest's source). True if it exported."""
    from ..errors import DITError

    weights = DITModel.resolve_pretrained(name_or_dir) / "model.safetensors"
    source = {"pretrained": str(name_or_dir), "sha256": sha256_file(weights)}
    recover(out_dir, log)
    try:
        export = Export.open(out_dir)
        manifest = export.manifest
        if (
            manifest.source == source
            and manifest.layouts == list(LAYOUT_ROLES)
            and manifest.opset == DEFAULT_OPSET
        ):
            export.verify(list(manifest.graphs), "fp32")
            return False
    except DITError as exc:
        if out_dir.exists():
            log(f"re-exporting: the export in {out_dir} is not reusable ({exc})")
    log(f"exporting {name_or_dir} to {out_dir} ...")
    run_export(
        DITModel.from_pretrained(name_or_dir),
        out_dir,
        layout="both",
        source=source,
        overwrite=True,
        log=lambda line: log("  " + line),
    )
    return True
