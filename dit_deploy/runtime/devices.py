"""What accelerators this machine has, asked without importing torch."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util


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


def gpu_unavailable_reason() -> str | None:
    """None when an NVIDIA GPU and the ``tensorrt`` package are usable, else why not."""
    if cuda_device_count() == 0:
        return "no NVIDIA GPU/driver on this machine (libcuda not found or no device)"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install 'dit-deploy[gpu]')"
    return None
