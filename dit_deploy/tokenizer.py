"""Pure-Python BERT WordPiece tokenizer (numpy + stdlib, no torch, no transformers).

Reproduces Hugging Face's pure-Python ``BertTokenizer`` (transformers 4.x; called
``BertTokenizerLegacy`` in 5.x), which the DIT authors called with ``tokenize`` +
``convert_tokens_to_ids`` for ``bert-base-uncased``. The Rust-backed tokenizer agrees except on
Greek final sigma and unassigned code points (see tests/test_tokenizer.py). Steps:

1. basic tokenisation: drop NUL, U+FFFD and control characters, map whitespace to a space,
   put spaces around CJK ideographs, NFC-normalise, split on whitespace, lowercase and strip
   accents (NFD, drop category ``Mn``) when uncased, split every punctuation character off;
2. WordPiece: greedy longest-match-first with the ``##`` continuation prefix; a word longer
   than ``max_input_chars_per_word`` (100) characters, or one that cannot be covered by the
   vocabulary, becomes ``[UNK]``.

Layout of one encoded expression, exactly as the authors' ``convert_examples_to_features``::

    [CLS] + first (max_tokens - 2) word pieces + [SEP] + [PAD] (id 0) ... up to max_tokens

Special-token strings typed by the user (``"[SEP]"``, ``"[MASK]"``) are ordinary text here and
are split into ``[``, ``sep``, ``]``: Hugging Face would keep them as special tokens. No
referring expression contains them; the choice keeps user text from injecting control tokens.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ArtifactError, TextError

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
MAX_INPUT_CHARS_PER_WORD = 100
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    """BERT's rule: every non-alphanumeric ASCII symbol, plus Unicode category P*."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(char: str) -> bool:
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _clean_text(text: str) -> str:
    """Drop NUL, U+FFFD and control characters; turn every whitespace character into a space."""
    out = []
    for char in text:
        if char in "\x00\ufffd" or _is_control(char):
            continue
        out.append(" " if _is_whitespace(char) else char)
    return "".join(out)


def _split_punctuation(word: str) -> list[str]:
    pieces: list[str] = []
    current = ""
    for char in word:
        if _is_punctuation(char):
            if current:
                pieces.append(current)
                current = ""
            pieces.append(char)
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


@dataclass(frozen=True)
class Encoding:
    """One encoded expression.

    Attributes:
        input_ids: int64 (max_tokens,) ``[CLS] pieces [SEP] 0 ... 0``.
        attention_mask: int64 (max_tokens,) 1 on real tokens (specials included), 0 on padding.
        tokens: the real tokens, ``[CLS]`` and ``[SEP]`` included (len == attention_mask.sum()).
        truncated: True when word pieces beyond the first ``max_tokens - 2`` were dropped.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    tokens: list[str] = field(default_factory=list)
    truncated: bool = False


class WordPieceTokenizer:
    """BERT WordPiece tokenizer equal to Hugging Face's ``BertTokenizer``.

    Args:
        vocab: token -> id, in the order of ``vocab.txt`` lines.
        lowercase: lowercase and strip accents (uncased BERT). DIT uses ``bert-base-uncased``.
        max_tokens: sequence length L including ``[CLS]`` and ``[SEP]`` (DIT: 20).
        max_chars: longest accepted expression, in characters (a guard, not a model limit).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        lowercase: bool = True,
        max_tokens: int = 20,
        max_chars: int = 1000,
    ) -> None:
        if max_tokens < 3:
            raise ValueError(f"max_tokens must be >= 3 ([CLS], one piece, [SEP]), got {max_tokens}")
        self.vocab = vocab
        self.lowercase = lowercase
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.unk_token = "[UNK]"
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.pad_id, self.unk_id = vocab["[PAD]"], vocab["[UNK]"]

    @classmethod
    def from_vocab_file(
        cls,
        path: str | Path,
        *,
        lowercase: bool = True,
        max_tokens: int = 20,
        max_chars: int = 1000,
    ) -> WordPieceTokenizer:
        """Load a BERT ``vocab.txt`` (one token a line, id = line number).

        Raises:
            ArtifactError: the file is missing, unreadable, empty, or lacks a special token.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"cannot read tokenizer vocabulary {path}: {exc}. Point to the vocab.txt of "
                "bert-base-uncased (it ships in every export directory)."
            ) from exc
        if lines and lines[-1] == "":
            lines.pop()  # trailing newline, as readlines() + rstrip("\n") would see it
        vocab: dict[str, int] = {}
        for index, token in enumerate(lines):
            vocab[token] = index  # later duplicates win, like HF's load_vocab
        if not vocab:
            raise ArtifactError(f"tokenizer vocabulary {path} is empty; re-export the model.")
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ArtifactError(
                f"tokenizer vocabulary {path} lacks the special tokens {missing}; "
                "it is not a BERT vocab.txt."
            )
        return cls(vocab, lowercase=lowercase, max_tokens=max_tokens, max_chars=max_chars)

    # ----------------------------------------------------------------- tokenisation
    def _check(self, text: object) -> str:
        if not isinstance(text, str):
            raise TextError(f"a referring expression must be a str, got {type(text).__name__}")
        if len(text) > self.max_chars:
            raise TextError(
                f"referring expression has {len(text)} characters, more than the limit of "
                f"{self.max_chars} (max_chars); DIT reads only the first {self.max_tokens - 2} "
                "word pieces anyway, so shorten the text."
            )
        return text

    def _basic_tokenize(self, text: str) -> list[str]:
        text = _clean_text(text)
        text = "".join(f" {c} " if _is_cjk(c) else c for c in text)
        text = unicodedata.normalize("NFC", text)
        words: list[str] = []
        for word in text.split():
            if self.lowercase:
                word = unicodedata.normalize("NFD", word.lower())
                word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            words.extend(_split_punctuation(word))
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > MAX_INPUT_CHARS_PER_WORD:
            return [self.unk_token]
        pieces: list[str] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text`` without specials and without truncation.

        Raises:
            TextError: ``text`` is not a str, or longer than ``max_chars``.
        """
        text = self._check(text)
        return [p for w in self._basic_tokenize(text) for p in self._wordpiece(w)]

    def encode(self, text: str) -> Encoding:
        """Encode one expression to the fixed DIT layout (see module docstring).

        Raises:
            TextError: not a str, too long, or empty after cleaning (no word pieces).
        """
        pieces = self.tokenize(text)
        if not pieces:
            raise TextError(
                f"referring expression {text!r} is empty (only whitespace or control "
                "characters); describe the object to segment."
            )
        keep = self.max_tokens - 2
        tokens = ["[CLS]", *pieces[:keep], "[SEP]"]
        ids = np.full(self.max_tokens, self.pad_id, dtype=np.int64)
        ids[: len(tokens)] = [self.vocab.get(t, self.unk_id) for t in tokens]
        mask = np.zeros(self.max_tokens, dtype=np.int64)
        mask[: len(tokens)] = 1
        return Encoding(ids, mask, tokens, truncated=len(pieces) > keep)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode B expressions -> (input_ids, attention_mask), both int64 (B, max_tokens)."""
        if isinstance(texts, str):
            raise TextError("encode_batch takes a list of expressions; use encode() for one str")
        encodings = [self.encode(t) for t in texts]
        if not encodings:
            empty = np.zeros((0, self.max_tokens), dtype=np.int64)
            return empty, empty.copy()
        return (
            np.stack([e.input_ids for e in encodings]),
            np.stack([e.attention_mask for e in encodings]),
        )
