"""``Export``: an export directory parsed once per version of its manifest, in one process."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from dit_deploy.errors import ArtifactError
from dit_deploy.runtime import Export, Predictor
from dit_deploy.runtime import export as export_module


@pytest.fixture
def export(tmp_path, tiny_export):
    out = tmp_path / "export"
    shutil.copytree(tiny_export, out)
    return out


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    seen: list[str] = []
    parse = export_module.read_manifest

    def counted(directory):
        seen.append(str(directory))
        return parse(directory)

    monkeypatch.setattr(export_module, "read_manifest", counted)
    return seen


def test_one_parse_per_manifest_version(export, parses):
    first = Export.open(export)
    assert Export.open(str(export)) is first and Export.open(first) is first
    assert len(parses) == 1
    # this process writes: the object is current without reading the file back
    changed = replace(first.manifest, mask_threshold=0.25)
    first.write(changed)
    assert Export.open(export).manifest.mask_threshold == 0.25 and len(parses) == 1
    # another process writes: the next open reads the new version
    replace(changed, mask_threshold=0.5).write(export)
    assert Export.open(export).manifest.mask_threshold == 0.5 and len(parses) == 2


def test_a_cached_export_still_notices_a_missing_graph(export):
    Export.open(export)
    (export / "dit_fused.onnx").unlink()
    with pytest.raises(ArtifactError, match="is missing graph dit_fused.onnx"):
        Export.open(export)


def test_layout_is_resolved_in_one_place(export):
    e = Export.open(export)
    assert e.layouts == ["split", "fused"] and e.layout() == "fused"
    assert e.layout("split") == "split" and e.roles() == ("dit_fused",)
    assert e.precisions[0] == "fp32"
    graphs = {k: v for k, v in e.manifest.graphs.items() if k != "dit_fused"}
    e.write(replace(e.manifest, graphs=graphs))
    assert e.layout() == "split"
    with pytest.raises(ArtifactError, match="has no 'fused' graphs .* --layout fused"):
        e.layout("fused")


def test_the_predictor_takes_an_export_and_reads_nothing_again(export, parses):
    e = Export.open(export)
    with Predictor(e, threads=1) as p:
        assert p.export is e and p.layout == "fused"
    with Predictor(export, threads=1, layout="split") as p:
        assert p.export is e
    assert len(parses) == 1
