"""Checkpoint loading with strict key checking.

Three sources, one rule: every model parameter must be provided and every provided
tensor must be used, except an explicit allow-list of parameters the released DIT
checkpoints carry but never use. Nothing is unpickled beyond tensors
(``torch.load(..., weights_only=True)``).

- authors' DIT checkpoints: ``{'state_dict': ..., 'epoch', 'optimizer', ...}``,
  keys optionally prefixed ``module.`` (DDP), BERT in the original port's names;
- SAM checkpoints (``sam_vit_{b,l,h}_*.pth``) to initialise training
  (``image_encoder.`` -> ``visual_encoder.``); the text encoder comes from its own
  directory and DIT's new layers keep their initialisation;
- our format: a directory with ``config.json`` + ``model.safetensors`` + ``vocab.txt``.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from .config import DITConfig, TextEncoderConfig
from .dit import DIT

# Parameters present in the authors' checkpoints that the released model never uses.
# (regex, reason) — the reasons are printed in load reports.
UNUSED_IN_RELEASED_MODEL: tuple[tuple[str, str], ...] = (
    (r"query_embeddings", "created by the authors' Net, passed to the encoder, never read"),
    (r"self_attention\..*", "nn.MultiheadAttention whose call is commented out"),
    (r"lang_encoder\.bert\.pooler\..*", "BERT pooler: DIT reads token features only"),
    (r"lang_encoder\.bert\.encoder\.layer\.(\d+)\..*", "BERT layers after the one DIT reads"),
    (r"lang_encoder\.bert\.embeddings\.position_ids", "transformers buffer, rebuilt at init"),
)
# Parameters a SAM checkpoint cannot provide: DIT's own layers and the text branch.
DIT_ONLY = (r"visual_encoder\.probs\..*", r"visual_encoder\.prob_text\..*", r"text_proj\..*")

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"


@dataclass
class LoadReport:
    """What a load used, ignored (allow-listed) and left at initialisation."""

    source: str
    loaded: int = 0
    ignored_unused: list[str] = field(default_factory=list)
    kept_initialisation: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {self.loaded} tensors, ignored {len(self.ignored_unused)} "
            f"unused by the released model, {len(self.kept_initialisation)} left at init"
        )


def read_torch_file(path: str | Path) -> Mapping[str, object]:
    """``torch.load`` restricted to tensors and containers; typed errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not _pickled_code(path):  # nothing that would run: a broken or foreign file
            raise CheckpointError(
                f"cannot read checkpoint {path}: it is not a PyTorch checkpoint, or it is "
                "truncated; re-download or re-save it."
            ) from None
        # torch's weights-only unpickler met a Python object that loading would execute
        raise CheckpointError(
            f"{path} holds executable code (pickled Python objects beyond tensors) and will "
            "not be loaded. A safe checkpoint holds only tensors and plain containers: in a "
            "trusted environment, re-save it with torch.save({'state_dict': "
            "model.state_dict()}, path) or as safetensors."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {_first_line(exc)}. It is not a PyTorch "
            "checkpoint, or it is truncated; re-download or re-save it."
        ) from None


# what a tensor checkpoint legitimately names in its pickle
_SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "numpy.")


def _pickled_code(path: Path) -> list[str]:
    """The callables a checkpoint's pickle would import and call on load (read with
    ``pickletools``, which executes nothing); [] when there are none or it is not a pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile, OSError):
        return []
    return [g for g in found if not g.startswith(_SAFE_GLOBALS)]


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's text, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _rename_legacy_layernorm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old BERT ports name LayerNorm parameters gamma/beta."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        out[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)] = value
    return out


def _is_unused(key: str, feature_layer: int) -> bool:
    for pattern, _ in UNUSED_IN_RELEASED_MODEL:
        match = re.fullmatch(pattern, key)
        if match:
            # a BERT layer is unused only if DIT does not run it
            return not match.groups() or int(match.group(1)) >= feature_layer
    return False


def _format_keys(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(
    model: DIT,
    state: Mapping[str, torch.Tensor],
    source: str,
    may_be_missing: tuple[str, ...] = (),
) -> LoadReport:
    """Load ``state`` into ``model``; raise :class:`CheckpointError` listing every problem."""
    expected = model.state_dict()
    feature_layer = model.config.text_encoder.feature_layer
    report = LoadReport(source)
    usable: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, tensor in state.items():
        if key in expected:
            if tuple(tensor.shape) != tuple(expected[key].shape):
                mismatched.append(
                    f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[key].shape)}"
                )
            else:
                usable[key] = tensor
        elif _is_unused(key, feature_layer):
            report.ignored_unused.append(key)
        else:
            unexpected.append(key)
    missing = [
        k
        for k in expected
        if k not in usable and not any(re.fullmatch(p, k) for p in may_be_missing)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:10])}")
    if problems:
        raise CheckpointError(
            f"{source} does not match DIT config {model.config.name!r}: "
            + " | ".join(problems)
            + ". Check --config (variant and size) and that the file is a DIT/SAM checkpoint."
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    report.kept_initialisation = [k for k in expected if k not in usable]
    return report


def authors_state_dict(raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The authors' ``{'state_dict': ...}`` (or a bare state dict) in our key names."""
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError("not a DIT checkpoint: expected a state dict of tensors")
    return _rename_legacy_layernorm(_strip_prefix(state, "module."))


def load_dit_checkpoint(model: DIT, path: str | Path) -> LoadReport:
    """Load an authors'-format (or our training ``.pth``) DIT checkpoint, strictly."""
    state = authors_state_dict(read_torch_file(path))
    if any(k.startswith("image_encoder.") for k in state):
        raise CheckpointError(
            f"{path} is a SAM checkpoint, not a DIT one; use DITModel.from_sam(...) to "
            "initialise training from it"
        )
    return load_state_dict_strict(model, state, str(path))


def load_sam_checkpoint(model: DIT, path: str | Path) -> LoadReport:
    """Initialise the image encoder, prompt encoder and mask decoder from a SAM checkpoint."""
    state = authors_state_dict(read_torch_file(path))
    renamed = {
        ("visual_encoder." + k[len("image_encoder.") :] if k.startswith("image_encoder.") else k): v
        for k, v in state.items()
    }
    return load_state_dict_strict(
        model, renamed, str(path), may_be_missing=(*DIT_ONLY, r"lang_encoder\..*")
    )


# --- text encoder directories (Hugging Face layout) -------------------------------------


def text_encoder_config_from_dir(path: str | Path, feature_layer: int = 1) -> TextEncoderConfig:
    """Read a Hugging Face BERT-family ``config.json`` into our text-encoder config."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(
            f"text encoder directory {path} has no config.json; pass the directory of a "
            "Hugging Face BERT model (config.json, vocab.txt, weights)"
        )
    hf = json.loads(cfg_file.read_text())
    return TextEncoderConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_act=hf.get("hidden_act", "gelu"),
        feature_layer=feature_layer,
        lowercase=True,
        name=hf.get("_name_or_path") or Path(path).name,
    )


def check_text_encoder_matches(config: DITConfig, path: str | Path) -> None:
    """Raise :class:`ConfigError` if the directory's BERT differs from the model config."""
    found = text_encoder_config_from_dir(path, config.text_encoder.feature_layer)
    fields = ("vocab_size", "hidden_size", "num_heads", "intermediate_size")
    diffs = [
        f"{f}: model {getattr(config.text_encoder, f)} vs {path} {getattr(found, f)}"
        for f in fields
        if getattr(found, f) != getattr(config.text_encoder, f)
    ]
    if diffs:
        raise ConfigError(
            f"text encoder at {path} does not fit config {config.name!r}: {'; '.join(diffs)}"
        )


def read_text_encoder_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a Hugging Face BERT directory, keyed like ``lang_encoder.bert.*``."""
    path = Path(path)
    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        state = load_file(str(st))
    elif pt.is_file():
        state = read_torch_file(pt)
    else:
        raise CheckpointError(f"no model.safetensors or pytorch_model.bin in {path}")
    state = _rename_legacy_layernorm(_strip_prefix(state, "bert."))
    return {
        f"lang_encoder.bert.{k}": v
        for k, v in state.items()
        if not k.startswith(("cls.", "bert.cls."))  # pre-training heads
    }


def load_text_encoder(model: DIT, path: str | Path) -> LoadReport:
    """Load only the text branch from a Hugging Face directory (strict on that branch)."""
    check_text_encoder_matches(model.config, path)
    state = read_text_encoder_weights(path)
    return load_state_dict_strict(
        model,
        state,
        str(path),
        may_be_missing=(
            r"visual_encoder\..*",
            r"prompt_encoder\..*",
            r"mask_decoder\..*",
            r"text_proj\..*",
        ),
    )


# --- our format ---------------------------------------------------------------------------


def save_pretrained(model: DIT, out_dir: str | Path, vocab_file: str | Path | None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``vocab.txt``) to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(
        state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "dit_config": model.config.name}
    )
    (out / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    if vocab_file is not None:
        (out / VOCAB_FILE).write_bytes(Path(vocab_file).read_bytes())
    return out


def read_pretrained_config(path: str | Path) -> DITConfig:
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointError(f"{path} is not a dit-deploy model directory: no {CONFIG_FILE}")
    try:
        return DITConfig.from_dict(json.loads(cfg.read_text()))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg} is not valid JSON: {exc}") from exc


def load_pretrained_weights(model: DIT, path: str | Path) -> LoadReport:
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    return load_state_dict_strict(model, state, str(weights))
