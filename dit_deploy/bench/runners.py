"""What a benchmark cell runs: the PyTorch reference or a runtime ``Predictor``.

Both expose ``prepare(images, texts) -> (feeds, letterboxes)``, ``low_res_logits(feeds)``
and ``stages(feeds) -> {stage: callable}`` for the per-stage split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    tokenizer: Any
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float

    def prepare(self, images, texts) -> tuple[dict[str, np.ndarray], list]: ...

    def low_res_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...

    def stages(self, feeds: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]: ...

    def synchronize(self) -> None: ...


def load_torch_model(source: dict[str, Any]):
    from ..model.dit_model import DITModel

    if "pretrained" in source:
        return DITModel.from_pretrained(source["pretrained"])
    return DITModel.from_checkpoint(
        source["checkpoint"],
        config=source.get("config", "layer_wise_vit_b"),
        text_encoder=source.get("text_encoder"),
        vocab=source.get("vocab"),
    )


class TorchRunner:
    """The PyTorch reference; ``sdpa`` picks fused attention, ``autocast`` ("bf16") runs it
    under ``torch.autocast`` (the tuned cell)."""

    def __init__(
        self, source: dict[str, Any], sdpa: bool, device: str = "cpu", autocast: str | None = None
    ) -> None:
        import torch

        self.torch = torch
        self.autocast = autocast
        self.model = load_torch_model(source).to(device)
        self.model.network.visual_encoder.use_sdpa = sdpa
        cfg = self.model.config
        self.tokenizer = self.model.tokenizer
        self.input_size, self.threshold = cfg.input_size, cfg.mask_threshold
        self.mean, self.std = cfg.pixel_mean, cfg.pixel_std
        self.device = device

    def prepare(self, images, texts):
        return self.model.prepare(images, texts)

    def _precision(self):
        if not self.autocast:
            return contextlib.nullcontext()
        dtype = {"bf16": self.torch.bfloat16, "fp16": self.torch.float16}[self.autocast]
        return self.torch.autocast(self.device.split(":")[0], dtype=dtype)

    def low_res_logits(self, feeds):
        with self._precision():
            return self.model.low_res_logits(feeds)

    def size_mb(self) -> float:
        net = self.model.network
        return sum(t.numel() * t.element_size() for t in net.state_dict().values()) / 1e6

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def stages(self, feeds):
        torch, net, dev = self.torch, self.model.network, self.device
        t = {k: torch.from_numpy(v).to(dev) for k, v in feeds.items()}
        with torch.inference_mode(), self._precision():
            text = net.encode_text(t["input_ids"], t["attention_mask"])
            emb = net.encode_image(t["image"], text)

        def wrap(fn):
            def run():
                with torch.inference_mode(), self._precision():
                    return fn()

            return run

        return {
            "text encoder": wrap(lambda: net.encode_text(t["input_ids"], t["attention_mask"])),
            "DIT encoder": wrap(lambda: net.encode_image(t["image"], text)),
            "decoder": wrap(lambda: net.decode(emb, text)),
        }


class RuntimeRunner:
    """A torch-free ``Predictor`` over an export directory."""

    def __init__(
        self,
        export_dir: str,
        backend: str,
        device: str,
        layout: str | None,
        precision: str,
        threads: int | None,
        max_batch: int = 8,
    ) -> None:
        """``max_batch``: the largest batch benchmarked (ONNX Runtime's TensorRT provider
        builds its profile 1 .. max_batch around it; a larger one tunes for batches never
        timed)."""
        from ..runtime import Predictor

        self.predictor = Predictor(
            export_dir,
            backend=backend,
            device=device,
            layout=layout,
            threads=threads,
            max_batch=max_batch,
            precision=precision,
        )
        m = self.predictor.manifest
        self.tokenizer = self.predictor.tokenizer
        self.input_size, self.threshold = m.input_size, m.mask_threshold
        self.mean, self.std = tuple(m.pixel_mean), tuple(m.pixel_std)

    def prepare(self, images, texts):
        return self.predictor.prepare(images, texts)

    def low_res_logits(self, feeds):
        return self.predictor.low_res_logits(feeds)

    def size_mb(self) -> float:
        files = []
        for backend in self.predictor.graphs.values():
            path = Path(backend.path)
            files += [path, *path.parent.glob(path.name + ".data")]
        return sum(f.stat().st_size for f in files) / 1e6

    def synchronize(self) -> None:  # ONNX Runtime returns host arrays: already synchronous
        return None

    def stages(self, feeds):
        return self.predictor.chain.stages(feeds)
