"""Saving ONNX graphs (torch-free: the export and the precision steps share it)."""

from __future__ import annotations

from pathlib import Path

TWO_GB = 2**31


def save_onnx(model, path: Path) -> None:
    """Save a graph; over 2 GB (protobuf's limit) the weights go to ``<file>.data`` beside it."""
    import onnx

    large = model.ByteSize() > TWO_GB
    onnx.save(
        model,
        str(path),
        save_as_external_data=large,
        location=path.name + ".data" if large else None,
    )
