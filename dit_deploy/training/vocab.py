"""Vocabulary pruning: a BERT-family text encoder cut down to the word pieces a corpus needs.

MiniLM-L6's 30522 x 384 word-embedding table alone is 47 MB. A model that only ever reads a
small closed vocabulary (the synthetic grammar) keeps:

- the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``;
- every word piece the full tokenizer produces for the given words;
- every single ASCII character and its ``##`` form that the original vocabulary holds, so
  that any ASCII word still tokenises (character by character) instead of becoming ``[UNK]``.

Rows of ``word_embeddings`` are copied in the ORIGINAL vocabulary order and the pruned
``vocab.txt`` is written in that same order (id = line number), so the result is an ordinary
Hugging Face BERT directory. Word pieces that are not kept (e.g. "horse") now tokenise to
single characters, and non-ASCII characters to ``[UNK]``.
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Iterable
from pathlib import Path

from ..cli_types import OneLineParser
from ..tokenizer import WordPieceTokenizer

KEEP_SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def pruned_tokens(vocab_file: str | Path, words: Iterable[str]) -> list[str]:
    """The tokens to keep, in the original vocabulary order.

    Args:
        vocab_file: the full ``vocab.txt``.
        words: words (or whole sentences) the pruned model must tokenise exactly as before.
    """
    tok = WordPieceTokenizer.from_vocab_file(vocab_file)
    keep = set(KEEP_SPECIALS)
    for w in words:
        keep.update(tok.tokenize(w))
    chars = set(string.ascii_lowercase + string.digits + string.punctuation)
    keep.update(c for c in chars if c in tok.vocab)
    keep.update("##" + c for c in chars if "##" + c in tok.vocab)
    order = sorted(tok.vocab.items(), key=lambda kv: kv[1])
    return [t for t, _ in order if t in keep]


def prune_text_encoder(src: str | Path, out: str | Path, words: Iterable[str]) -> Path:
    """Write a pruned copy of the Hugging Face BERT directory ``src`` to ``out``.

    ``out`` gets ``config.json`` (``vocab_size`` updated), ``vocab.txt`` and
    ``model.safetensors`` (word-embedding rows remapped, everything else unchanged, pooler
    and pre-training heads dropped).

    Returns:
        ``out``.
    """
    import torch
    from safetensors.torch import load_file, save_file

    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = WordPieceTokenizer.from_vocab_file(src / "vocab.txt")
    tokens = pruned_tokens(src / "vocab.txt", words)
    rows = torch.tensor([tok.vocab[t] for t in tokens], dtype=torch.long)
    state = load_file(str(src / "model.safetensors"))
    new_state = {}
    for key, value in state.items():
        if "pooler." in key or key.startswith("cls."):
            continue
        if key.endswith("embeddings.word_embeddings.weight"):
            value = value.index_select(0, rows)
        new_state[key] = value.contiguous()
    save_file(new_state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = len(tokens)
    config["_name_or_path"] = f"{config.get('_name_or_path') or src.name} (pruned vocabulary)"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    for extra in ("README.md",):
        if (src / extra).is_file():
            shutil.copy(src / extra, out / f"ORIGINAL_{extra}")
    return out


#: Words of the synthetic grammar (``dit_deploy.data.synthetic``) besides its attribute values.
SYNTHETIC_FUNCTION_WORDS: tuple[str, ...] = (
    "the",
    "one",
    "at",
    "on",
    "of",
    "to",
    "left",
    "right",
    "top",
    "bottom",
    "above",
    "below",
    "leftmost",
    "rightmost",
    "topmost",
    "lowest",
    "biggest",
    "largest",
    "smallest",
    "object",
)


def synthetic_words() -> list[str]:
    """Every word the synthetic generator can emit (attributes + grammar words)."""
    from ..data.synthetic import COLORS, SHAPES, SIZES

    return sorted({*SHAPES, *COLORS, *SIZES, *SYNTHETIC_FUNCTION_WORDS})


def main(argv: list[str] | None = None) -> int:
    """``python -m dit_deploy.training.vocab --src MINILM_DIR --out DIR [--data ROOT]``."""
    import argparse

    p = OneLineParser(
        prog="python -m dit_deploy.training.vocab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--src", required=True, type=Path, help="Hugging Face BERT directory")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a dataset whose train sentences must tokenise without [UNK] (checked)",
    )
    args = p.parse_args(argv)
    words = synthetic_words()
    sentences: list[str] = []
    if args.data is not None:
        from ..data import open_dataset

        sentences = [s.sentence for s in open_dataset(args.data, "train")]
    out = prune_text_encoder(args.src, args.out, [*words, *sentences])
    tok = WordPieceTokenizer.from_vocab_file(out / "vocab.txt")
    unk = sorted({w for s in sentences for w in s.split() if "[UNK]" in tok.tokenize(w)})
    if unk:
        raise SystemExit(f"words that became [UNK]: {unk}")
    print(f"pruned vocabulary: {len(tok.vocab)} tokens -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
