"""The main job end to end, reduced (small evaluation set): export -> FP16/INT8 -> (no
engines here) -> dit-bench -> gallery; a second run reuses everything that is still valid."""

from __future__ import annotations

import json

from PIL import Image

from dit_deploy.cli import main


def _bf16_available() -> bool:
    from dit_deploy.runtime.backends.table import backend_row

    return backend_row("openvino").unavailable_reason("bf16") is None


def _count_manifest_reads(monkeypatch) -> dict[str, int]:
    """Successful parses of a manifest, by export directory, in this process."""
    from dit_deploy.runtime import export as export_module

    counts: dict[str, int] = {}
    parse = export_module.read_manifest

    def counted(directory):
        manifest = parse(directory)
        key = str(directory.resolve())
        counts[key] = counts.get(key, 0) + 1
        return manifest

    monkeypatch.setattr(export_module, "read_manifest", counted)
    return counts


def test_main_job_reduced_end_to_end_and_reuse(tmp_path, capsys, monkeypatch):
    reads = _count_manifest_reads(monkeypatch)
    argv = [
        "--out",
        str(tmp_path / "job"),
        "--eval-size",
        "16",
        "--calib-size",
        "8",
        "--batch",
        "1",
        "--budget",
        "0.05",
        "--gallery-size",
        "2",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # the export is written by this process: every later step gets it without reading it back
    assert all(n <= 1 for n in reads.values()), reads
    from dit_deploy.runtime.devices import gpu_unavailable_reason

    skipped = "engines: skipped, TensorRT needs an NVIDIA GPU" in out
    assert skipped == (gpu_unavailable_reason() is not None)  # built on a GPU machine
    report_dir = tmp_path / "job" / "report"
    report = json.loads((report_dir / "report.json").read_text())
    cells = {c["label"]: c["result"] for c in report["cells"]}
    for label in (
        "onnxruntime cpu fp32 (fused)",
        "onnxruntime cpu fp16 (fused)",
        "onnxruntime cpu int8 (fused)",
        "pytorch (as users run it)",
    ):
        assert cells[label]["status"] == "ok", (label, cells[label])
    # the bundled model clearly segments by the text on its evaluation set
    assert cells["onnxruntime cpu fp32 (fused)"]["accuracy"]["mIoU"] > 0.45
    for name in (
        "gallery_pytorch_fp32.png",
        "gallery_onnxruntime_fp32.png",
        "gallery_onnxruntime_fp16.png",
        "gallery_onnxruntime_int8.png",
    ):
        with Image.open(report_dir / name) as im:
            assert im.width >= 500 and im.height >= 600
    manifest = json.loads((tmp_path / "job" / "export" / "manifest.json").read_text())
    bf16 = _bf16_available()
    assert set(manifest["precisions"]) == {"fp16", "int8"} | ({"bf16"} if bf16 else set())
    if bf16:  # verified, recorded, benchmarked and in the gallery
        assert manifest["precisions"]["bf16"]["dit_fused"]["execution"] == "openvino-bf16"
        assert cells["openvino cpu bf16 (fused)"]["status"] == "ok"
        assert (report_dir / "gallery_openvino_bf16.png").is_file()
    else:
        assert "quantize bf16: skipped" in out

    from dit_deploy.runtime import Export

    Export.forget(tmp_path / "job" / "export")  # as a new process would find it
    reads.clear()
    assert main(["run", *argv[:8], "--only", "export,quantize"]) == 0
    assert reads == {str((tmp_path / "job" / "export").resolve()): 1}  # once for every step
    again = capsys.readouterr().out
    assert "export: up to date" in again
    assert "quantize fp16: up to date" in again and "quantize int8: up to date" in again
