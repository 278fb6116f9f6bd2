"""Where a batch job's rows come from: a JSONL/CSV file of pairs, or a dataset split.

A source is read once, on the driver, into :class:`SourceRows`: the rows in input order
(their positions define the output shards, so a re-run sees the same shards), the rows that
are already known to be bad (unparseable line, missing field, duplicate id) with their
reasons, and whether ground-truth masks exist (dataset splits), which turns on the metrics.

``pairs.jsonl``: one JSON object a line, ``{"id": ..., "image": "path.jpg", "text": "..."}``;
``pairs.csv``: a header with ``image`` and ``text`` (and optionally ``id``). ``id`` defaults
to ``<file name>:<line>``; ids are written as strings. Relative image paths are relative to
the file's directory. ``NAME:SPLIT`` (``refcoco:val``, ``synthetic:val``) reads the split
with :func:`dit_deploy.data.open_dataset` from ``--data``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..data import open_dataset
from ..errors import DatasetError, InputError

_DATASET_SPEC = re.compile(r"^(?P<name>[A-Za-z][\w+]*):(?P<split>[A-Za-z][\w+]*)$")


@dataclass(frozen=True)
class InputRow:
    """One (image, expression) pair to segment.

    Attributes:
        position: index in the input (0-based); decides the shard.
        id: the row's id, unique in the input.
        image: absolute path of the image file.
        text: the referring expression.
        gt: pickled ground-truth mask source (a :class:`~dit_deploy.data.types.MaskSource`),
            or b"" when the source has no ground truth.
    """

    position: int
    id: str
    image: str
    text: str
    gt: bytes = b""


@dataclass(frozen=True)
class RowError:
    """A row that cannot be processed, and why (one line of ``errors.jsonl``)."""

    position: int
    id: str
    error: str
    image: str = ""
    text: str = ""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "image": self.image, "text": self.text, "error": self.error}


@dataclass
class SourceRows:
    """The rows of a source, in input order, good and bad."""

    description: str
    rows: list[InputRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    has_ground_truth: bool = False

    def __len__(self) -> int:
        return len(self.rows) + len(self.errors)

    def fingerprint(self) -> str:
        """sha256 over every row's (position, id, image, text) and every known-bad row."""
        digest = hashlib.sha256()
        for r in self.rows:
            digest.update(json.dumps([r.position, r.id, r.image, r.text]).encode() + b"\n")
        for e in self.errors:
            digest.update(json.dumps([e.position, e.id, e.error]).encode() + b"\n")
        return digest.hexdigest()


def is_dataset_spec(source: str) -> bool:
    """True for ``NAME:SPLIT`` that is not an existing file."""
    return not Path(source).exists() and _DATASET_SPEC.match(source) is not None


def read_source(source: str, data_dir: str | Path | None = None) -> SourceRows:
    """Read a JSONL/CSV file of pairs or a ``NAME:SPLIT`` dataset split (see module doc).

    Raises:
        DatasetError: the file or dataset does not exist or cannot be read as a whole.
        InputError: a dataset split is named without ``data_dir``.
    """
    if is_dataset_spec(source):
        match = _DATASET_SPEC.match(source)
        assert match is not None
        if data_dir is None:
            raise InputError(
                f"{source!r} names a dataset split; pass --data DIR (the directory that holds "
                f"{match['name']}/refs(*).p, or the preprocessed anns/ and masks/)"
            )
        return _read_dataset(match["name"], match["split"], Path(data_dir))
    path = Path(source).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"{source} is neither a file nor a dataset split; pass a .jsonl or .csv file of "
            '{"id", "image", "text"} rows, or NAME:SPLIT (e.g. refcoco:val) with --data DIR'
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path)
    raise DatasetError(f"{path}: unknown input format {suffix!r}; use .jsonl or .csv")


class _RowCollector:
    """Checks fields and id uniqueness while rows are read, in input order."""

    def __init__(self, description: str, base: Path) -> None:
        self.out = SourceRows(description)
        self.base = base
        self.first_seen: dict[str, str] = {}

    def add(self, where: str, record: object, default_id: str) -> None:
        position = len(self.out)
        if not isinstance(record, dict):
            self.bad(position, default_id, f"{where}: expected an object, got {record!r:.80}")
            return
        row_id = record.get("id")
        row_id = default_id if row_id is None or row_id == "" else str(row_id)
        image, text = record.get("image"), record.get("text")
        if row_id in self.first_seen:
            self.bad(
                position,
                row_id,
                f"{where}: duplicate id {row_id!r} (first at {self.first_seen[row_id]}); "
                "ids must be unique",
                image,
                text,
            )
            return
        self.first_seen[row_id] = where
        missing = [k for k, v in (("image", image), ("text", text)) if v is None]
        if missing:
            self.bad(position, row_id, f"{where}: no {' or '.join(missing)} field", image, text)
            return
        if not isinstance(image, str) or not image.strip():
            self.bad(position, row_id, f"{where}: image must be a non-empty path", image, text)
            return
        if not isinstance(text, str):
            self.bad(position, row_id, f"{where}: text must be a string", image, text)
            return
        path = Path(image).expanduser()
        resolved = path if path.is_absolute() else self.base / path
        self.out.rows.append(InputRow(position, row_id, str(resolved), text))

    def bad(
        self, position: int, row_id: str, error: str, image: object = "", text: object = ""
    ) -> None:
        image = image if isinstance(image, str) else ""
        text = text if isinstance(text, str) else ""
        self.out.errors.append(RowError(position, row_id, error, image, text))


def _read_jsonl(path: Path) -> SourceRows:
    collector = _RowCollector(f"{path} (JSONL)", path.parent.resolve())
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path.name}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    collector.bad(len(collector.out), where, f"{where}: invalid JSON: {exc}")
                    continue
                collector.add(where, record, where)
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    return collector.out


def _read_csv(path: Path) -> SourceRows:
    collector = _RowCollector(f"{path} (CSV)", path.parent.resolve())
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "image" not in fields or "text" not in fields:
                raise DatasetError(
                    f"{path}: the CSV header must name the columns image and text (and "
                    f"optionally id); it has {fields}"
                )
            for record in reader:
                where = f"{path.name}:{reader.line_num}"
                collector.add(where, record, where)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    return collector.out


def _read_dataset(name: str, split: str, data_dir: Path) -> SourceRows:
    dataset = open_dataset(data_dir, split, dataset=name)
    out = SourceRows(f"{name}:{split} in {data_dir} ({len(dataset)} expressions)")
    out.has_ground_truth = True
    sentences_seen: dict[int, int] = {}
    for position, sample in enumerate(dataset):
        k = sentences_seen.get(sample.ref_id, 0)
        sentences_seen[sample.ref_id] = k + 1
        out.rows.append(
            InputRow(
                position,
                f"{sample.ref_id}_{k}",
                str(Path(sample.image_path).resolve()),
                sample.sentence,
                pickle.dumps(sample.mask_source),
            )
        )
    return out
