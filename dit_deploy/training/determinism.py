"""A deterministic mode that is one on GPUs too: the interpolations of training as matmuls.

PyTorch has no deterministic CUDA kernel for the backward of ``F.interpolate``, and DIT
interpolates three things on every training step: the absolute position table (bicubic,
64 -> 32 per side at 512 px), each block's relative-position tables (linear, then a gather),
and the loss's x4 bilinear upsampling of the logits. Each is a LINEAR map of its input with
coefficients that depend only on sizes, so each is replaced here by a fixed matrix, computed
once by applying the model's OWN function (``resize_abs_pos``, SAM's ``get_rel_pos``,
``upsample_logits``) to an identity basis, and applied with a matmul whose backward is a
matmul too (deterministic with ``CUBLAS_WORKSPACE_CONFIG``). The forward values equal the
interpolations up to float rounding; nothing else changes.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..model.dit import upsample_logits
from ..model.encoder import PositionTables, resize_abs_pos
from ..model.sam_modules import get_rel_pos


@torch.no_grad()
def abs_pos_operator(build: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h*w, build*build): ``resize_abs_pos`` of a (1, build, build, C) table, as a matrix."""
    n = build * build
    basis = torch.eye(n, device=device).reshape(1, build, build, n)
    return resize_abs_pos(basis, h, w).reshape(h * w, n).contiguous()


@torch.no_grad()
def rel_pos_operator(length: int, size: int, device: torch.device) -> torch.Tensor:
    """(size, size, length): ``get_rel_pos(size, size, table)`` of a (length, dim) table is
    ``einsum("ijl,ld->ijd", W, table)``."""
    return get_rel_pos(size, size, torch.eye(length, device=device)).contiguous()


@torch.no_grad()
def upsample_operator(size: int, device: torch.device) -> torch.Tensor:
    """(4*size, size): ``upsample_logits`` (x4 bilinear, align_corners=True) is separable,
    ``up = U @ x @ U.T`` on each (size, size) map."""
    basis = torch.eye(size, device=device).reshape(size, 1, size, 1)
    return upsample_logits(basis)[:, 0, :, 0].T.contiguous()


def matmul_upsample(low_res: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, 1, s, s) -> (B, 1, 4s, 4s) with the matrix of :func:`upsample_operator`."""
    return u @ low_res @ u.T


_UPSAMPLE: dict[tuple[int, torch.device], torch.Tensor] = {}


def bce_loss_matmul(low_res_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss (``trainer.bce_loss``) with the upsampling as matmuls."""
    x = low_res_logits.float()
    key = (x.shape[-1], x.device)
    if key not in _UPSAMPLE:
        _UPSAMPLE[key] = upsample_operator(*key)
    u = _UPSAMPLE[key]
    return F.binary_cross_entropy_with_logits(matmul_upsample(x, u), target)


def install_matmul_position_tables(encoder: nn.Module, h: int, w: int) -> None:
    """Make ``encoder.position_tables(h, w)`` use fixed matrices (for this grid only).

    The tables stay functions of the parameters (so they train); only the resize is a
    matmul. Another grid falls back to the model's own resize.
    """
    original = encoder.position_tables
    p = encoder.pos_embed
    device = p.device if p is not None else next(encoder.parameters()).device
    k_abs = abs_pos_operator(p.shape[1], h, w, device) if p is not None else None
    rel_ops: dict[tuple[int, int], torch.Tensor] = {}
    for block in encoder.blocks:
        if block.attn.use_rel_pos:
            for length, size in (
                (block.attn.rel_pos_h.shape[0], h),
                (block.attn.rel_pos_w.shape[0], w),
            ):
                if (length, size) not in rel_ops:
                    rel_ops[length, size] = rel_pos_operator(length, size, device)

    def tables(qh: int, qw: int) -> PositionTables:
        if (qh, qw) != (h, w):
            return original(qh, qw)
        pos = None
        if p is not None:
            c = p.shape[-1]
            pos = (k_abs.to(p.dtype) @ p.reshape(-1, c)).reshape(1, h, w, c)
        rel = []
        for block in encoder.blocks:
            a = block.attn
            if not a.use_rel_pos:
                rel.append(None)
                continue
            wh = rel_ops[a.rel_pos_h.shape[0], h].to(a.rel_pos_h.dtype)
            ww = rel_ops[a.rel_pos_w.shape[0], w].to(a.rel_pos_w.dtype)
            rel.append((wh @ a.rel_pos_h, ww @ a.rel_pos_w))
        return PositionTables(pos, rel)

    encoder.position_tables = tables  # an instance attribute: state_dict and class untouched


__all__ = [
    "abs_pos_operator",
    "bce_loss_matmul",
    "install_matmul_position_tables",
    "matmul_upsample",
    "rel_pos_operator",
    "upsample_operator",
]


def enable_determinism() -> None:
    """PyTorch's strict deterministic mode: every op runs a deterministic kernel or raises.

    cuBLAS needs its workspace config before its first handle; cuDNN is pinned. The
    interpolations that have no deterministic CUDA backward become matmuls (above) and
    attention runs the math kernel (see :class:`~dit_deploy.training.trainer.Trainer`).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
