"""``dit-deploy triton-repo EXPORT_DIR OUT``: a Triton model repository for a standalone server.

Layout with ``--backend onnxruntime`` or ``tensorrt`` (Triton's native backends run the
graph; ``S`` = input size, ``L`` = max tokens, ``h = S/4``)::

    OUT/
      dit/config.pbtxt               ensemble, the served contract (see .contract), 1/ empty
      dit_preprocess/config.pbtxt    python: IMAGE, TEXT -> image, input_ids, attention_mask,
      dit_preprocess/1/model.py        LETTERBOX; 1/export/ = manifest.json + vocabulary
      dit_model/config.pbtxt         onnxruntime_onnx: 1/model.onnx (the fused graph), or
      dit_model/1/...                  tensorrt_plan: 1/model.plan (+ its .json sidecar)
      dit_postprocess/config.pbtxt   python: low_res_logits, LETTERBOX -> MASK_PNG, MASK_RLE,
      dit_postprocess/1/model.py       SCORE

With ``--backend python`` (what ``dit-deploy serve`` runs): one python model behind a
one-step ensemble (for Triton's failure accounting, see :func:`_ensemble_config`)::

    OUT/
      dit/config.pbtxt               ensemble: IMAGE, TEXT -> MASK_PNG, MASK_RLE, SCORE
      dit_pipeline/config.pbtxt      python, the same tensors (triton_models.Pipeline: the
      dit_pipeline/1/model.py          Predictor on --runtime)
      dit_pipeline/1/export/         the export, trimmed to one layout and precision

Every ``config.pbtxt`` is parsed against Triton's ``ModelConfig`` protobuf (from
``tritonclient``) before the repository is moved into place. The python models need
``dit-deploy`` importable in tritonserver's Python (``pip install`` it in the container).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, ConfigError, DITError
from ..hints import command
from ..runtime.engine_sidecar import engine_file, read_sidecar, sidecar_path
from ..runtime.export import Export
from ..runtime.manifest import LAYOUT_ROLES, Manifest
from . import contract as c
from .triton_models import EXPORT_LINK

# Triton backends a repository can use (the python one runs our Predictor on any runtime)
BACKENDS = ("onnxruntime", "tensorrt", "python")
PIPELINE = "dit_pipeline"  # --backend python: the one python model behind ensemble "dit"
_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
}
MODEL_PY = (
    '"""Triton python backend: {what} (dit-deploy triton-repo)."""\n\n'
    "from dit_deploy.serving.triton_models import {cls} as TritonPythonModel  # noqa: F401\n"
)


@dataclass
class RepoOptions:
    export_dir: Path
    out: Path
    backend: str = "onnxruntime"
    precision: str = "fp32"
    max_batch: int = 8
    instances: int = 1
    kind: str = "gpu"
    max_queue_delay_us: int = 2000
    #: the dynamic batcher's preferred size (1: one request per execution, larger client
    #: batches still accepted up to max_batch); None: Triton's largest batch it can form
    preferred_batch: int | None = None
    max_pixels: int | None = None
    max_image_bytes: int | None = None
    force: bool = False
    # --backend python: the Predictor's runtime backend, layout and threads per instance
    runtime: str = "onnxruntime"
    layout: str | None = None
    threads: int | None = None
    link_export: bool = False  # --backend python: read the export in place (serve), no copy
    gpus: tuple[int, ...] | None = None  # KIND_GPU instances on these GPUs (None: every GPU)

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {BACKENDS}; got {self.backend!r}")
        if self.kind not in ("gpu", "cpu"):
            raise ConfigError(f"--kind must be gpu or cpu; got {self.kind!r}")
        if self.backend == "tensorrt" and self.kind == "cpu":
            raise ConfigError("TensorRT engines run on GPUs only; use --kind gpu")
        if self.backend == "python" and self.runtime == "tensorrt" and self.kind == "cpu":
            raise ConfigError("--runtime tensorrt runs on GPUs only; use --kind gpu")
        if self.backend != "python" and (self.layout or self.threads):
            given = " and ".join(f for f, v in (("--layout", self.layout),
                                                ("--threads", self.threads)) if v)  # fmt: skip
            raise ConfigError(
                f"{given} applies to --backend python only; the {self.backend} ensemble runs "
                "the fused graph with Triton's own backend (drop it, or use --backend python)"
            )
        if self.max_batch < 1 or self.instances < 1 or self.max_queue_delay_us < 0:
            raise ConfigError("--max-batch and --instances must be >= 1, the delay >= 0")
        if self.preferred_batch is not None and not 1 <= self.preferred_batch <= self.max_batch:
            raise ConfigError(
                f"preferred batch {self.preferred_batch} must be within 1..--max-batch "
                f"{self.max_batch}"
            )
        if self.out.exists() and not self.force:
            raise ConfigError(f"{self.out} exists; pass --force to replace it")


def _dims(shape: list) -> str:
    return "[ " + ", ".join(str(d) for d in shape[1:]) + " ]"  # drop the batch axis


def _tensor(name: str, type_: str, dims: str) -> str:
    return f'  {{ name: "{name}" data_type: {type_} dims: {dims} }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _model_config(
    name: str,
    header: str,
    inputs: list[str],
    outputs: list[str],
    opts: RepoOptions,
    kind: str,
    parameters: dict[str, str] | None = None,
) -> str:
    gpus = ""
    if kind == "gpu" and opts.gpus:
        gpus = " gpus: [ " + ", ".join(str(g) for g in opts.gpus) + " ]"
    text = f'name: "{name}"\n{header}\nmax_batch_size: {opts.max_batch}\n'
    text += _io("input", inputs) + _io("output", outputs)
    preferred = f" preferred_batch_size: [ {opts.preferred_batch} ]" if opts.preferred_batch else ""
    text += (
        f"dynamic_batching {{ max_queue_delay_microseconds: {opts.max_queue_delay_us}"
        f"{preferred} }}\n"
        f"instance_group [ {{ count: {opts.instances} kind: KIND_{kind.upper()}{gpus} }} ]\n"
    )
    for key, value in (parameters or {}).items():
        text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    return text


def parse_config(text: str, where: str = "config.pbtxt"):
    """``ModelConfig`` protobuf of a ``config.pbtxt`` text; :class:`ArtifactError` if invalid."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ArtifactError(f"{where} does not parse as Triton's ModelConfig: {exc}") from None


def _graph_io(manifest: Manifest, precision: str) -> tuple[list[str], list[str], str]:
    if "fused" not in manifest.layouts:
        raise ArtifactError(
            "the onnxruntime/tensorrt repository serves the fused graph, and this export has "
            f"only {manifest.layouts}; re-export with --layout fused (or both)"
        )
    spec = manifest.graph("dit_fused", precision)
    inputs = [_tensor(t.name, _TYPES[t.dtype], _dims(t.shape)) for t in spec.inputs]
    outputs = [
        _tensor(t.name, _TYPES[t.dtype], _dims(t.shape))
        for t in spec.outputs
        if t.name == "low_res_logits"
    ]
    return inputs, outputs, spec.file


def _copy_export(
    export: Path, manifest: Manifest, precision: str, layout: str, dst: Path, graphs: bool = True
) -> None:
    """The manifest trimmed to one layout and precision, and the files it names (the graphs
    only when ``graphs``: pre-processing needs the manifest and the vocabulary alone)."""
    roles = LAYOUT_ROLES[layout]
    data = manifest.to_dict()
    data["graphs"] = {r: g for r, g in data["graphs"].items() if r in roles}
    table = data.get("precisions", {}).get(precision, {})
    kept = {r: g for r, g in table.items() if r in roles}
    data["precisions"] = {precision: kept} if kept else {}
    dst.mkdir(parents=True)
    files = [manifest.tokenizer["vocab_file"]]
    if graphs:
        tables = (data["graphs"], *data["precisions"].values())
        files += [g["file"] for t in tables for g in t.values()]
    for name in files:
        for f in (export / name, export / f"{name}.data"):
            if f.is_file():
                shutil.copy2(f, dst / f.name)
    (dst / "manifest.json").write_text(json.dumps(data, indent=1))


def write_repository(opts: RepoOptions, log: Callable[[str], None] = print) -> Path:
    """Write the repository to ``opts.out`` (atomically: built beside it, then renamed)."""
    opts.check()
    export = Export.open(opts.export_dir)
    if opts.precision not in export.precisions:
        raise ArtifactError(
            f"{opts.export_dir} has no {opts.precision} graphs (has "
            f"{', '.join(export.precisions)}); make them with: dit-deploy run --only quantize"
        )
    configs = _configs(opts, export.manifest, log)
    for name, text in configs.items():
        parse_config(text, f"{name}/config.pbtxt")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}.", dir=opts.out.parent))
    try:
        for name, text in configs.items():
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(text)
        _fill(tmp, opts, export)
        if opts.out.exists():
            shutil.rmtree(opts.out)
        os.replace(tmp, opts.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"triton-repo: wrote {opts.out} ({_summary(opts)})")
    return opts.out


def _configs(opts: RepoOptions, manifest: Manifest, log: Callable[[str], None]) -> dict[str, str]:
    """Model name -> ``config.pbtxt`` text of every model of the repository."""
    image_text = [_tensor(n, "TYPE_STRING", "[ 1 ]") for n in c.INPUTS]
    served = [
        _tensor(c.MASK_PNG, "TYPE_STRING", "[ 1 ]"),
        _tensor(c.MASK_RLE, "TYPE_STRING", "[ 1 ]"),
        _tensor(c.SCORE, "TYPE_FP32", "[ 1 ]"),
    ]
    limits = {
        "max_pixels": str(opts.max_pixels or c.SERVE_MAX_PIXELS),
        "max_image_bytes": str(opts.max_image_bytes or c.MAX_IMAGE_BYTES),
    }
    if opts.backend != "python":
        return _ensemble_configs(opts, manifest, image_text, served, limits, log)
    parameters = {
        **limits,
        "runtime": opts.runtime,
        "precision": opts.precision,
        "device": "cuda" if opts.kind == "gpu" else "cpu",
        "layout": opts.layout or "",
        "threads": str(opts.threads or ""),
        "max_batch": str(opts.max_batch),
    }
    return {
        c.MODEL_NAME: _ensemble_config(opts.max_batch, image_text, served, True),
        PIPELINE: _model_config(
            PIPELINE, 'backend: "python"', image_text, served, opts, opts.kind, parameters
        ),
    }


def _fill(tmp: Path, opts: RepoOptions, export: Export) -> None:
    """The models' files: python models, the export (or a link to it), the graph or engine."""
    layout, manifest = export.layout(opts.layout), export.manifest
    if opts.backend == "python":
        model = tmp / PIPELINE / "1"
        what = "decode, the Predictor, encode"
        (model / "model.py").write_text(MODEL_PY.format(what=what, cls="Pipeline"))
        if opts.link_export:  # dit-deploy serve: the export where it is, read in place
            (model / EXPORT_LINK).write_text(str(opts.export_dir.resolve()))
        else:
            _copy_export(opts.export_dir, manifest, opts.precision, layout, model / "export")
        return
    for name, (what, cls) in {
        "dit_preprocess": ("decode, letterbox, tokenize", "Preprocess"),
        "dit_postprocess": ("un-letterbox, threshold, PNG/RLE", "Postprocess"),
    }.items():
        (tmp / name / "1" / "model.py").write_text(MODEL_PY.format(what=what, cls=cls))
    preprocess = tmp / "dit_preprocess" / "1" / "export"
    _copy_export(opts.export_dir, manifest, opts.precision, layout, preprocess, graphs=False)
    model_dir = tmp / "dit_model" / "1"
    if opts.backend == "onnxruntime":
        _, _, graph = _graph_io(manifest, opts.precision)
        shutil.copy2(opts.export_dir / graph, model_dir / "model.onnx")
        if (opts.export_dir / f"{graph}.data").is_file():
            shutil.copy2(opts.export_dir / f"{graph}.data", model_dir / f"{graph}.data")
    else:
        engine = _checked_engine(opts, manifest)
        shutil.copy2(engine, model_dir / "model.plan")
        shutil.copy2(sidecar_path(engine), model_dir / "model.plan.json")


def _summary(opts: RepoOptions) -> str:
    if opts.backend == "python":
        return (
            f"ensemble '{c.MODEL_NAME}': {PIPELINE} [python: {opts.runtime}, {opts.precision}, "
            f"{opts.kind}]"
        )
    return (
        f"ensemble '{c.MODEL_NAME}': dit_preprocess -> dit_model [{opts.backend}, "
        f"{opts.precision}, {opts.kind}] -> dit_postprocess"
    )


def _ensemble_configs(
    opts: RepoOptions,
    manifest: Manifest,
    image_text: list[str],
    served: list[str],
    limits: dict[str, str],
    log: Callable[[str], None],
) -> dict[str, str]:
    """The four configs of the ensemble over a native backend (onnxruntime, tensorrt)."""
    s, length = manifest.input_size, manifest.max_tokens
    feeds = [
        _tensor("image", "TYPE_FP32", f"[ 3, {s}, {s} ]"),
        _tensor("input_ids", "TYPE_INT64", f"[ {length} ]"),
        _tensor("attention_mask", "TYPE_INT64", f"[ {length} ]"),
    ]
    letterbox = _tensor("LETTERBOX", "TYPE_INT64", "[ 7 ]")
    logits = _tensor("low_res_logits", "TYPE_FP32", f"[ 1, {s // 4}, {s // 4} ]")
    configs = {
        "dit_preprocess": _model_config(
            "dit_preprocess", 'backend: "python"', image_text, [*feeds, letterbox], opts, "cpu",
            limits,
        ),
        "dit_postprocess": _model_config(
            "dit_postprocess", 'backend: "python"', [logits, letterbox], served, opts, "cpu",
            {"mask_threshold": repr(float(manifest.mask_threshold))},
        ),
    }  # fmt: skip
    graph_in, graph_out, _ = _graph_io(manifest, opts.precision)
    if opts.backend == "tensorrt":
        # Triton's TensorRT backend refuses a config that leaves out an output the engine
        # has ("expected configuration for output ..."): every one, from the sidecar; the
        # ensemble still maps only low_res_logits
        sidecar = read_sidecar(_checked_engine(opts, manifest))
        graph_out = [_tensor(t.name, _TYPES[t.dtype], _dims(t.shape)) for t in sidecar.outputs]
        if sidecar.version_compatible:
            log(
                "triton-repo: the engine is version-compatible: start tritonserver with "
                "--backend-config=tensorrt,version-compatible=true, or its TensorRT "
                "backend refuses to deserialize it (a plan carrying host code)"
            )
    platform = "onnxruntime_onnx" if opts.backend == "onnxruntime" else "tensorrt_plan"
    configs["dit_model"] = _model_config(
        "dit_model", f'platform: "{platform}"', graph_in, graph_out, opts, opts.kind
    )
    configs[c.MODEL_NAME] = _ensemble_config(opts.max_batch, image_text, served)
    return configs


def _checked_engine(opts: RepoOptions, manifest: Manifest) -> Path:
    """The fused graph's engine, its sidecar read and checked against the graph and batch.

    The GPU match is checked by Triton's TensorRT backend on the target; here: the engine
    was built from this very graph (sha256) and its profile admits ``--max-batch``.
    """
    spec = manifest.graph("dit_fused", opts.precision)
    engine = opts.export_dir / engine_file(spec.file)
    rebuild = command(
        "engines", opts.export_dir, "--precision", opts.precision, "--layout", "fused",
        "--max-batch", str(opts.max_batch),
    )  # fmt: skip
    if not engine.is_file():
        raise ArtifactError(
            f"{opts.export_dir} has no TensorRT engine {engine.name}; build it on a GPU of the "
            f"target's type (a plan runs only on the GPU type and TensorRT version it was "
            f"built with): {rebuild}"
        )
    sidecar = read_sidecar(engine)
    if spec.sha256 and sidecar.source_sha256 != spec.sha256:
        raise ArtifactError(
            f"{engine.name} was built from another {spec.file} (sha256 "
            f"{sidecar.source_sha256[:12]}, the graph now has {spec.sha256[:12]}); rebuild: "
            f"{rebuild}"
        )
    if sidecar.min_batch != 1:
        raise ConfigError(
            f"{engine.name}'s profile starts at batch {sidecar.min_batch}; Triton sends "
            f"batches of 1 whenever one request is queued: rebuild it with batch 1 in its "
            f"profile: {rebuild}"
        )
    engine_max = int(sidecar.profile.get("max_batch", 0))
    if engine_max < opts.max_batch:
        raise ConfigError(
            f"{engine.name} admits batches up to {engine_max}, less than --max-batch "
            f"{opts.max_batch}; pass --max-batch {engine_max} or rebuild: {rebuild}"
        )
    return engine


def _ensemble_config(
    max_batch: int, inputs: list[str], outputs: list[str], pipeline: bool = False
) -> str:
    """Ensemble ``dit``: pre-process -> graph -> post-process, or (``pipeline``) one step,
    the python Pipeline. The one-step ensemble is there for Triton's accounting: the python
    backend reports every request of an execution as a success even when its response is an
    error, while the ensemble counts an error response as a failure
    (``nv_inference_request_failure``, the statistics API)."""

    def maps(kind: str, pairs: dict[str, str]) -> str:
        return "".join(f'      {kind} {{ key: "{k}" value: "{v}" }}\n' for k, v in pairs.items())

    feeds = {n: f"_{n}" for n in ("image", "input_ids", "attention_mask")}
    steps = [
        ("dit_preprocess", {n: n for n in c.INPUTS}, {**feeds, "LETTERBOX": "_letterbox"}),
        ("dit_model", feeds, {"low_res_logits": "_low_res_logits"}),
        (
            "dit_postprocess",
            {"low_res_logits": "_low_res_logits", "LETTERBOX": "_letterbox"},
            {n: n for n in c.OUTPUTS},
        ),
    ]
    if pipeline:
        steps = [(PIPELINE, {n: n for n in c.INPUTS}, {n: n for n in c.OUTPUTS})]
    text = f'name: "{c.MODEL_NAME}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
    text += _io("input", inputs) + _io("output", outputs)
    text += "ensemble_scheduling {\n  step [\n"
    text += ",\n".join(
        f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
        + maps("input_map", ins)
        + maps("output_map", outs)
        + "    }"
        for model, ins, outs in steps
    )
    return text + "\n  ]\n}\n"


def fix_python_backend_env(environ: dict | None = None) -> str | None:
    """Make Triton's python-backend stub load THIS interpreter's ``libpython``.

    The stub links ``libpython3.X.so`` dynamically; with a non-system Python (pyenv, conda)
    the loader may find the distribution's library of another patch release first, and the
    stub fails at start-up (e.g. ``'_thread.RLock' object has no attribute
    '_recursion_count'``). Putting ``sysconfig``'s ``LIBDIR`` first on ``LD_LIBRARY_PATH``
    fixes it. Returns the directory put first, or None when nothing needs changing (no shared
    library, or the system's own Python whose library the loader finds by default).
    """
    environ = os.environ if environ is None else environ
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not soname or not (Path(libdir) / soname).exists():
        return None
    if libdir.startswith(("/usr/lib", "/lib")):
        return None
    parts = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])
    return libdir


def bundled_tritonserver(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """``tritonserver`` from PyTriton's wheel, ready to run a repository on this machine.

    The binary, its libraries and the python-backend stub for this Python version are laid out
    in ``workdir`` as PyTriton does; the environment puts this interpreter's ``libpython``
    first (see :func:`fix_python_backend_env`) and its ``bin`` first on ``PATH`` (the
    stub takes the ``python3`` found there as its environment). Returns the command's first
    arguments (add ``--model-repository=...`` and ports) and the environment.
    """
    try:
        from pytriton.triton import TRITONSERVER_DIST_DIR
        from pytriton.utils.distribution import get_libs_path, get_stub_path
    except ModuleNotFoundError:
        raise DITError(
            "PyTriton (which bundles tritonserver) is not installed: "
            "pip install 'dit-deploy[serve]'"
        ) from None
    dist = Path(workdir) / "tritonserver"
    if not dist.exists():
        skip = shutil.ignore_patterns("python_backend_stubs")
        shutil.copytree(TRITONSERVER_DIST_DIR, dist, ignore=skip)
        stub = get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}")
        shutil.copy2(stub, dist / "backends" / "python" / "triton_python_backend_stub")
    env = dict(os.environ)
    fix_python_backend_env(env)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (env.get("LD_LIBRARY_PATH", ""), str(get_libs_path())) if p
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return [str(dist / "bin" / "tritonserver"), f"--backend-directory={dist / 'backends'}"], env
