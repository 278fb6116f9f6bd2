"""SAM's building blocks, imported from the ``segment-anything`` package.

Why not ``import segment_anything``: its package ``__init__`` imports the automatic
mask generator, which imports torchvision. torchvision wheels are tied to one torch
build (PyPI's torchvision does not import beside the CPU torch 2.13 this project
tests with), and DIT needs none of it. The ``modeling`` subpackage itself only needs
torch, so we load it under a private package name without running the parent
``__init__``. The classes and parameter names are SAM's own, so SAM checkpoints load
by name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import ModuleType

from ..errors import BackendUnavailableError

_ALIAS = "_dit_deploy_segment_anything"


def _modeling() -> ModuleType:
    alias_modeling = f"{_ALIAS}.modeling"
    if alias_modeling in sys.modules:
        return sys.modules[alias_modeling]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            "the 'segment-anything' package is not installed; "
            "install the torch extra: pip install 'dit-deploy[torch]'"
        )
    package = types.ModuleType(_ALIAS)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[_ALIAS] = package
    return importlib.import_module(alias_modeling)


_m = _modeling()
ImageEncoderViT = _m.ImageEncoderViT
MaskDecoder = _m.MaskDecoder
PromptEncoder = _m.PromptEncoder
TwoWayTransformer = _m.TwoWayTransformer
get_rel_pos = sys.modules[f"{_ALIAS}.modeling.image_encoder"].get_rel_pos

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "TwoWayTransformer", "get_rel_pos"]
