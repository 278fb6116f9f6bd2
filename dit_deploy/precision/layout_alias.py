"""The fused graph is the three split graphs in one: node for node the same computation.

The fused export wraps the three split modules as submodules ``text``, ``encoder`` and
``decoder`` (``exporters/wrappers.py``), so the tracer names the fused graph's node for the
split node ``/query/MatMul`` of the text encoder ``/text/query/MatMul``. The INT8 search uses
this to measure each node's sensitivity once (in the split layout) and to try the split
layout's plan on the fused graph before searching it again: at ViT-B the fused graph's own
sensitivity pass was 158 sessions of 6 s each.

The correspondence is checked, never assumed: it is used only when every quantized node of
the split graphs has its fused twin and the fused graph has no other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FUSED = "dit_fused"
# split role -> the fused wrapper's submodule holding it (exporters/wrappers.FusedForExport)
FUSED_PREFIX = {"text_encoder": "/text", "dit_encoder": "/encoder", "mask_decoder": "/decoder"}


def fused_twins(
    split_nodes: Mapping[str, Sequence[str]], fused_nodes: Sequence[str]
) -> dict[tuple[str, str], str] | None:
    """(split role, node) -> the fused graph's node computing the same, or None where the
    quantized nodes of the split graphs and of the fused graph do not correspond one to one
    (a role missing, a node without its twin, a fused node left over)."""
    if set(split_nodes) != set(FUSED_PREFIX):
        return None
    twins = {
        (role, name): FUSED_PREFIX[role] + name
        for role, names in split_nodes.items()
        for name in names
    }
    if sorted(twins.values()) != sorted(fused_nodes):
        return None
    return twins
