"""Every ``tensorrt`` and ``cuda.bindings`` name our TensorRT code uses exists.

``cuda.bindings`` (cuda-python) installs and imports without a GPU, so its names are checked
against the installed module. ``tensorrt`` needs its multi-GB library wheel to import; where
it is installed (GPU machines) the names are checked against the module itself, and
everywhere they are checked against symbol lists read from NVIDIA's own binding wheels
(``tensorrt-cu12-bindings`` 10.13.3.9 and 11.4.0.106, from PyPI): the identifiers in the
wheels' ``tensorrt.so`` (pybind11 keeps every exposed name as a string; the linker may merge a
name into the tail of a longer string, so a name counts as present when it ends such a
string). Regenerate a list with::

    pip download --no-deps tensorrt-cu12-bindings==VERSION -d /tmp/w
    python tests/test_tensorrt_api.py --extract /tmp/w/tensorrt_cu12_bindings-*.whl \\
        tests/fixtures/tensorrt_symbols/tensorrt-cu12-bindings-VERSION.txt

The names used are found by reading our source (``ast``): attribute chains on ``trt``,
``cudart`` and on the variables that hold TensorRT objects (``builder``, ``network``, ...).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    ROOT / "dit_deploy" / "runtime" / "backends" / "tensorrt.py",
    ROOT / "dit_deploy" / "precision" / "trt_build.py",
]
SYMBOLS = Path(__file__).parent / "fixtures" / "tensorrt_symbols"
TRT_VERSIONS = ("10.13.3.9", "11.4.0.106")
# variables holding TensorRT objects in our code -> their TensorRT class
TRT_OBJECTS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "config": "IBuilderConfig",
    "parser": "OnnxParser",
    "profile": "IOptimizationProfile",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "tensor": "ITensor",
    "timing_cache": "ITimingCache",
    "_runtime": "Runtime",
    "runtime": "Runtime",
}
# removed in TensorRT 11 (weak typing, implicit batch, calibrators): must not be used
REMOVED_IN_11 = (
    "EXPLICIT_BATCH",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "int8_calibrator",
    "IInt8EntropyCalibrator2",
    "platform_has_fast_fp16",
)


def _chain(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    if isinstance(node, ast.Attribute | ast.Call):
        return None
    return None


def used_names() -> dict[str, set[tuple[str, ...]]]:
    """{'trt': {('Builder',), ('NetworkDefinitionCreationFlag', 'STRONGLY_TYPED'), ...},
    'cudart': {...}, 'Builder': {('create_network',)}, ...} from our source."""
    found: dict[str, set[tuple[str, ...]]] = {}
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain = _chain(node)
            if not chain or len(chain) < 2:
                continue
            root, rest = chain[0], tuple(chain[1:])
            if root == "self" and rest[0] in TRT_OBJECTS:
                root, rest = rest[0], rest[1:]
            if not rest:
                continue
            if root in ("trt", "cudart"):
                found.setdefault(root, set()).add(rest)
            elif root in TRT_OBJECTS:
                found.setdefault(TRT_OBJECTS[root], set()).add(rest[:1])
    return found


def _maximal(chains: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {c for c in chains if not any(o != c and o[: len(c)] == c for o in chains)}


def test_source_uses_tensorrt_and_cuda_names():
    used = used_names()
    assert ("execute_async_v3",) in used["IExecutionContext"]
    assert ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") in used["trt"]
    assert ("cudaMemcpyAsync",) in used["cudart"]
    assert ("build_serialized_network",) in used["Builder"]


def test_cuda_bindings_names_exist_in_installed_cuda_python():
    cudart = pytest.importorskip("cuda.bindings.runtime")
    missing = []
    for chain in _maximal(used_names()["cudart"]):
        obj = cudart
        for part in chain:
            if not hasattr(obj, part):
                missing.append(".".join(chain))
                break
            obj = getattr(obj, part)
    assert not missing, f"not in cuda.bindings.runtime: {missing}"


def _symbols(version: str) -> set[str]:
    path = SYMBOLS / f"tensorrt-cu12-bindings-{version}.txt"
    return {line for line in path.read_text().split("\n") if line and not line.startswith("#")}


def _present(name: str, symbols: set[str]) -> bool:
    return name in symbols or any(s.endswith(name) for s in symbols)


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_tensorrt_names_exist_in_binding_wheel_symbols(version):
    symbols = _symbols(version)
    missing = sorted(
        {
            part
            for owner, chains in used_names().items()
            if owner != "cudart"
            for chain in chains
            for part in chain
            if not _present(part, symbols)
        }
    )
    assert not missing, f"not in the tensorrt {version} bindings: {missing}"


def test_no_api_removed_in_tensorrt_11_is_used():
    text = "\n".join(s.read_text() for s in SOURCES)
    code = re.sub(r'""".*?"""', "", text, flags=re.S)  # docstrings may name them
    for name in REMOVED_IN_11:
        assert name not in code, f"{name} is gone in TensorRT 11"
    for flag in ("FP16", "INT8", "BF16"):
        assert f"BuilderFlag.{flag}" not in code
    # and the symbol lists agree with NVIDIA's migration guide
    old, new = _symbols(TRT_VERSIONS[0]), _symbols(TRT_VERSIONS[1])
    assert "EXPLICIT_BATCH" in old and "EXPLICIT_BATCH" not in new
    assert _present("IInt8EntropyCalibrator2", old)
    assert not _present("IInt8EntropyCalibrator2", new)
    assert "STRONGLY_TYPED" in old and "STRONGLY_TYPED" in new


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt not installed")
def test_tensorrt_names_exist_in_installed_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # the libs wheel or the driver is missing
        pytest.skip(f"tensorrt does not import here: {exc}")
    missing = []
    for owner, chains in used_names().items():
        if owner == "cudart":
            continue
        base = trt if owner == "trt" else getattr(trt, owner)
        for chain in _maximal(chains):
            obj = base
            for part in chain:
                if not hasattr(obj, part):
                    missing.append(f"{owner}.{'.'.join(chain)}")
                    break
                obj = getattr(obj, part)
    assert not missing, f"not in tensorrt {trt.__version__}: {missing}"


def extract(wheel: Path, out: Path) -> int:
    """Write the identifier list of a tensorrt bindings wheel's ``tensorrt.so`` to ``out``."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("/tensorrt.so"))
        data = z.read(name)
        init = z.read(next(n for n in z.namelist() if n.endswith("_bindings/__init__.py")))
    # plus what the package's Python __init__ defines (nptype, __version__, ...)
    names = set(re.findall(r"^(?:def |class )?([A-Za-z_]\w*)\s*[(=:]", init.decode(), re.M))
    for raw in data.split(b"\0"):
        m = re.search(rb"[A-Za-z_][A-Za-z0-9_]{2,}$", raw)
        if m and not m.group().startswith(b"_Z") and len(m.group()) <= 48:
            names.add(m.group().decode())
    header = (
        f"# identifiers in {name} and its package __init__.py, from {wheel.name} (PyPI);\n"
        "# made by tests/test_tensorrt_api.py --extract\n"
    )
    out.write_text(header + "\n".join(sorted(names)) + "\n")
    return len(names)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--extract":
        print(extract(Path(sys.argv[2]), Path(sys.argv[3])), "names")
    else:
        print(__doc__)
