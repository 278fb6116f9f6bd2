"""The output directory of a batch job: shards committed atomically, resumable.

Shard ``k`` holds the input rows at positions ``[k * shard_size, (k + 1) * shard_size)``, so
the same input gives the same shards on every run. A shard is *done* when its file
``rows/part-<k>.jsonl`` exists and names exactly the ids of its input rows (together with
``errors/errors-<k>.jsonl``, written just before it). Every file is written to a temporary name
and renamed, so a killed job leaves only whole shards behind; the next run of the same
command skips them and redoes the rest. ``job.json`` records what the results depend on
(input, export graphs, precision, shard size, PNGs); a different job refuses to resume into
the same directory.

Layout (``OUT/rows`` holds exactly the result rows, one schema, so a dataset reader takes
the directory as it is: ``ray.data.read_json("OUT/rows")``, ``pandas.read_json(...,
lines=True)`` per file, Spark's ``spark.read.json``)::

    OUT/rows/part-00000.jsonl      {"id", "image", "text", "score", "mask": COCO RLE[, "png",
                                   "iou", "intersection", "union"]} per good row, input order
    OUT/errors/errors-00000.jsonl  {"id", "image", "text", "error"} per bad row (if any)
    OUT/masks/<id>.png             with --png (the id percent-encoded)
    OUT/job.json                   what this directory holds results of
    OUT/errors.jsonl               every bad row of every shard (written at the end)
    OUT/summary.json               counts, speed, metrics (written at the end)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..artifact_dir import clean_inner_leftovers
from ..atomic import write_bytes_atomic
from ..errors import DITError
from .sources import RowError, SourceRows

JOB_FILE = "job.json"
JOB_FORMAT = 2  # 2: rows/ and errors/ (1 had the shards beside job.json)
ERRORS_FILE = "errors.jsonl"
SUMMARY_FILE = "summary.json"
MASK_DIR = "masks"
ROWS_DIR = "rows"
ERRORS_DIR = "errors"


class BatchJobError(DITError):
    """The output directory cannot be used for this job (another job's results, not a dir)."""


def part_file(out: Path, shard: int) -> Path:
    return out / ROWS_DIR / f"part-{shard:05d}.jsonl"


def errors_file(out: Path, shard: int) -> Path:
    return out / ERRORS_DIR / f"errors-{shard:05d}.jsonl"


def _shard_files(out: Path) -> list[Path]:
    """Every shard file, of this layout and of format 1's (beside ``job.json``)."""
    return [*out.glob(f"{ROWS_DIR}/part-*.jsonl"), *out.glob(f"{ERRORS_DIR}/errors-*.jsonl"),
            *out.glob("part-*.jsonl"), *out.glob("errors-*.jsonl")]  # fmt: skip


def mask_file(row_id: str) -> str:
    """Relative path of a row's PNG mask: ``masks/<percent-encoded id>.png``."""
    name = quote(row_id, safe="")
    return f"{MASK_DIR}/{'_' + name if name.startswith('.') else name}.png"


def atomic_write(path: Path, data: bytes) -> None:
    """:func:`dit_deploy.atomic.write_bytes_atomic`, creating the directory first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def jsonl_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a file that is not valid JSONL raises ValueError."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class ShardPlan:
    """Which input positions belong to which shard."""

    total: int
    shard_size: int

    @property
    def count(self) -> int:
        return -(-self.total // self.shard_size)

    def shard_of(self, position: int) -> int:
        return position // self.shard_size

    def positions(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.total))


def job_record(source: SourceRows, shard_size: int, export: dict[str, Any], png: bool) -> dict:
    """What the results in an output directory depend on (see module doc)."""
    return {
        "format": JOB_FORMAT,
        "source": source.description,
        "input_sha256": source.fingerprint(),
        "rows": len(source),
        "shard_size": shard_size,
        "export": export,
        "png": png,
    }


def _differences(previous: dict, job: dict) -> list[str]:
    """What makes ``job`` another job than ``previous``: top-level fields, or the export's own
    (``export precision ('fp32' -> 'int8')``; its graphs' hashes only when nothing else
    explains them). The source's name is for people: the same rows by another path resume."""
    out = []
    for key, now in job.items():
        was = previous.get(key)
        if key == "source" or was == now:
            continue
        if not (isinstance(was, dict) and isinstance(now, dict)):
            out.append(key)
            continue
        subs = [f"{key} {k} ({was.get(k)!r} -> {v!r})" for k, v in now.items()
                if was.get(k) != v and k != "graphs_sha256"]  # fmt: skip
        out += subs or [f"{key} graphs (re-exported or re-quantized)"]
    return out


def open_output(
    out: Path, job: dict[str, Any], overwrite: bool, log: Callable[[str], None]
) -> None:
    """Create ``out`` for ``job``, or check that it holds results of the same job.

    Raises:
        BatchJobError: ``out`` is a file, or holds results of another job (without overwrite).
    """
    if out.exists() and not out.is_dir():
        raise BatchJobError(f"output {out} is a file; pass a directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / ROWS_DIR).mkdir(exist_ok=True)  # the dataset path exists even if every row fails
    for directory in (out, out / MASK_DIR, out / ROWS_DIR, out / ERRORS_DIR):
        clean_inner_leftovers(directory)  # a killed run's half-written files
    path = out / JOB_FILE
    if path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BatchJobError(
                f"{path} is unreadable ({exc}); pass --overwrite to start this job afresh"
            ) from exc
        different = _differences(previous, job)
        if different:
            raise BatchJobError(
                f"{out} holds the results of a different job (it differs in: "
                f"{', '.join(different)}); a re-run resumes only the same input, export, "
                "precision, --shard-size and --png. Pass --overwrite to discard those results, "
                "or choose another output directory"
            )
        return
    if overwrite:
        _remove_results(out, log)
    elif _shard_files(out):
        raise BatchJobError(
            f"{out} holds part-*.jsonl files but no {JOB_FILE}; pass --overwrite to replace "
            "them, or choose another output directory"
        )
    atomic_write(path, (json.dumps(job, indent=2) + "\n").encode())


def _remove_results(out: Path, log: Callable[[str], None]) -> None:
    names = _shard_files(out)
    names += [out / n for n in (JOB_FILE, ERRORS_FILE, SUMMARY_FILE) if (out / n).exists()]
    for path in names:
        path.unlink()
    if (out / MASK_DIR).is_dir():
        shutil.rmtree(out / MASK_DIR)
    if names:
        log(f"--overwrite: removed the previous results in {out}")


def done_shards(
    out: Path, plan: ShardPlan, ids_by_position: Sequence[str], log: Callable[[str], None]
) -> set[int]:
    """Shards whose files exist and name exactly their input ids; others are redone."""
    done = set()
    for shard in range(plan.count):
        path = part_file(out, shard)
        if not path.is_file():
            continue
        expected = sorted(ids_by_position[p] for p in plan.positions(shard))
        try:
            found = [r["id"] for r in read_jsonl(path)]
            if errors_file(out, shard).is_file():
                found += [r["id"] for r in read_jsonl(errors_file(out, shard))]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(f"shard {shard}: {path.name} is unreadable ({exc}); redoing it")
            continue
        if sorted(found) != expected:
            log(f"shard {shard}: {path.name} does not hold exactly its input ids; redoing it")
            continue
        done.add(shard)
    return done


@dataclass
class ShardWriter:
    """Collects finished rows (any order) and commits each shard once all its rows are in.

    ``commit`` order: PNGs, then ``errors-<k>.jsonl``, then ``part-<k>.jsonl`` (the marker
    that the shard is done).
    """

    out: Path
    plan: ShardPlan
    png: bool
    pending: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    committed: list[int] = field(default_factory=list)
    rows_ok: int = 0
    rows_failed: int = 0

    def add(self, record: dict[str, Any]) -> int | None:
        """Add one finished row (a result or an ``error``); returns the shard it completed."""
        position = int(record["position"])
        shard = self.plan.shard_of(position)
        rows = self.pending.setdefault(shard, {})
        rows.setdefault(position, record)  # a row delivered twice counts once
        if len(rows) < len(self.plan.positions(shard)):
            return None
        self._commit(shard, [rows[p] for p in sorted(rows)])
        del self.pending[shard]
        return shard

    def add_error(self, error: RowError) -> int | None:
        return self.add({"position": error.position, **error.to_json()})

    def _commit(self, shard: int, records: list[dict[str, Any]]) -> None:
        good = [r for r in records if not r.get("error")]
        bad = [{k: r.get(k, "") for k in ("id", "image", "text", "error")} for r in records]
        bad = [b for b in bad if b["error"]]
        lines = []
        for r in good:
            if self.png:
                atomic_write(self.out / mask_file(r["id"]), r["png"])
            lines.append(_output_row(r, self.png))
        if bad:
            atomic_write(errors_file(self.out, shard), jsonl_bytes(bad))
        else:
            errors_file(self.out, shard).unlink(missing_ok=True)
        atomic_write(part_file(self.out, shard), jsonl_bytes(lines))
        self.committed.append(shard)
        self.rows_ok += len(good)
        self.rows_failed += len(bad)


def _output_row(r: dict[str, Any], png: bool) -> dict[str, Any]:
    row = {
        "id": r["id"],
        "image": r["image"],
        "text": r["text"],
        "score": float(r["score"]),
        "mask": json.loads(r["mask"]),
    }
    if png:
        row["png"] = mask_file(r["id"])
    if int(r["union"]) >= 0:
        row.update(iou=float(r["iou"]), intersection=int(r["intersection"]))
        row["union"] = int(r["union"])
    return row


def collect(out: Path, plan: ShardPlan) -> tuple[list[dict], list[dict]]:
    """Every output row and every error record of a finished job, in input order."""
    rows: list[dict] = []
    errors: list[dict] = []
    for shard in range(plan.count):
        rows += read_jsonl(part_file(out, shard))
        if errors_file(out, shard).is_file():
            errors += read_jsonl(errors_file(out, shard))
    return rows, errors
