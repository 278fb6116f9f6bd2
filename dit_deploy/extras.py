"""Which pip extra brings an optional import, so a missing one is a one-line instruction."""

from __future__ import annotations

# top-level module -> the dit-deploy extra that installs it (the runtime backends' packages
# are their rows' in runtime/backends/table.py)
EXTRA_OF = {
    "torch": "torch",
    "transformers": "torch",
    "safetensors": "torch",
    "segment_anything": "torch",
    "onnx": "export",
    "onnxslim": "export",
    "onnxscript": "export",
    "onnxconverter_common": "export",
    "matplotlib": "plots",
    "pycocotools": "train",
    "tensorboard": "train",
    "tritonclient": "serve",
    "pytriton": "serve",
    "ray": "batch",
    "pandas": "batch",
    "pyarrow": "batch",
    "cuda": "gpu",
    "polygraphy": "gpu",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """A one-line fix for an optional dependency that is not installed (None if not ours)."""
    from .runtime.backends.table import extra_of_package

    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(top) or extra_of_package(top)
    if extra is None:
        return None
    hint = " (install torch first: pip install torch)" if extra == "torch" else ""
    return f"needs the optional package {top!r}: pip install 'dit-deploy[{extra}]'{hint}"
