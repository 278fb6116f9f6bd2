"""What accelerators this machine has, and the ``cuda.bindings`` helpers that ask (no torch).

``cuda_device_count`` asks the driver through ctypes (no package needed). ``gpu_info`` and
``cuda_call`` use cuda-python's ``cuda.bindings.runtime`` (imported only when called), whose
functions return ``(cudaError_t, *values)`` tuples.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
from dataclasses import dataclass
from typing import Any

from ..errors import BackendUnavailableError

CUDA_PYTHON_HINT = (
    "cuda-python >= 12.8 (cuda.bindings) is not installed: pip install 'dit-deploy[gpu]' "
    "(CUDA 13) or 'dit-deploy[gpu-cu12]' (CUDA 12)"
)


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver)."""
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0
    return 0


def import_cudart():
    """``cuda.bindings.runtime``; a typed error naming the extra when cuda-python is missing
    (cuda-python 12.6 and older have no ``cuda.bindings``)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendUnavailableError(CUDA_PYTHON_HINT) from exc
    return cudart


def cuda_call(result: Any) -> Any:
    """Unwrap a ``cuda.bindings`` result ``(err, *values)``; raise on a CUDA error.

    Returns None for ``(err,)``, the value for ``(err, value)``, else the tuple of values.
    """
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        name = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendUnavailableError(f"CUDA error {int(err)}: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """What an engine sidecar records about the GPU it was built on."""

    name: str
    compute_capability: str  # "9.0"


DEVICE_KINDS = ("cpu", "cuda", "tensorrt")


def parse_device(device: str) -> tuple[str, int]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"cpu"``, ``"cuda"``, ``"tensorrt"`` -> index 0.

    The one reading of a device string for every entry point (Predictor, serve, batch,
    bench, the Triton python model); a bad one is an :class:`InputError` naming the forms."""
    from ..errors import InputError

    kind, colon, index = str(device).partition(":")
    if kind not in DEVICE_KINDS or (
        colon and (not (index.isascii() and index.isdigit()) or kind == "cpu")
    ):
        raise InputError(
            f"device {device!r}: use cpu, cuda, cuda:N or tensorrt, tensorrt:N (N: a GPU index)"
        )
    return kind, int(index or 0)


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (through cuda-python)."""
    cudart = import_cudart()
    props = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")


# distributions that provide the ``tensorrt`` module, newest naming first
_TENSORRT_DISTRIBUTIONS = (
    "tensorrt",
    "tensorrt-cu13",
    "tensorrt-cu12",
    "tensorrt-cu13-bindings",
    "tensorrt-cu12-bindings",
)


def installed_tensorrt_version() -> str | None:
    """The installed TensorRT's version, read from package metadata without importing it
    (None when no TensorRT package is installed)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    for dist in _TENSORRT_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


NO_GPU = "no NVIDIA GPU/driver on this machine (libcuda not found or no device)"


def gpu_unavailable_reason(need_tensorrt: bool = True) -> str | None:
    """None when an NVIDIA GPU, ``cuda.bindings`` and (``need_tensorrt``) the ``tensorrt``
    package are usable, else why not (each missing piece named, so one run tells all)."""
    reasons = []
    if cuda_device_count() == 0:
        reasons.append(NO_GPU)
    if need_tensorrt and importlib.util.find_spec("tensorrt") is None:
        reasons.append("the tensorrt package is not installed (pip install 'dit-deploy[gpu]')")
    try:
        import_cudart()
    except BackendUnavailableError as exc:
        reasons.append(str(exc))
    return "; ".join(reasons) or None


def stack_versions() -> dict[str, str]:
    """What this machine has for the GPU path (for reports): GPU, driver-side CUDA,
    TensorRT, cuda-python, ONNX Runtime (+ providers), Polygraphy, PyTorch. Nothing
    missing raises: it reads "not installed" / "none"."""
    import importlib.metadata
    import platform

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    out = {"python": platform.python_version(), "gpus": str(cuda_device_count())}
    try:
        info = gpu_info(0)
        out["gpu"] = f"{info.name} (compute capability {info.compute_capability})"
    except (BackendUnavailableError, OSError) as exc:
        out["gpu"] = f"none ({exc})"
    out["tensorrt"] = installed_tensorrt_version() or "not installed"
    out["cuda-bindings"] = version("cuda-bindings")
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        if version(dist) != "not installed":
            import onnxruntime

            out[dist] = f"{version(dist)} {onnxruntime.get_available_providers()}"
    out["polygraphy"] = version("polygraphy")
    out["torch"] = version("torch")
    return out


if __name__ == "__main__":
    for key, value in stack_versions().items():
        print(f"{key:<16} {value}")
