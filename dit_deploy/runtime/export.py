"""``Export``: an export directory read once per process (torch-free).

    export = Export.open("exports/refcoco_vit_b")   # parsed and validated once
    export.layout()                                 # "fused" if exported, else "split"
    export.graph_path("dit_fused", "int8")          # the file to open
    export.verify(("dit_fused",), "int8")           # hashes, each file hashed once

Every verb, backend and generator takes an ``Export`` (or a path it opens with
:meth:`Export.open`). ``Export.open`` of the same directory returns the same object until its
``manifest.json`` changes on disk; :meth:`Export.write` replaces the manifest atomically and
keeps the object current without reading it back.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, InputError
from ..tokenizer import WordPieceTokenizer
from .manifest import (
    LAYOUT_ROLES,
    MANIFEST_FILE,
    GraphSpec,
    Manifest,
    check_files,
    open_tokenizer,
    read_manifest,
    verify_files,
)

# the layouts in preference order: an entry point runs the first one exported
DEFAULT_LAYOUTS = ("fused", "split")


def preferred_layouts() -> list[str]:
    """Every layout of ``LAYOUT_ROLES``, the preferred first."""
    return [*DEFAULT_LAYOUTS, *(x for x in LAYOUT_ROLES if x not in DEFAULT_LAYOUTS)]


def _stamp(directory: Path) -> tuple[int, int, int]:
    """What identifies one version of ``manifest.json`` (an atomic replace is a new inode)."""
    try:
        st = os.stat(directory / MANIFEST_FILE)
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Export:
    """One export directory: its manifest, layouts, graphs, tokenizer and verification records.

    Attributes:
        path: the directory.
        manifest: its parsed, validated :class:`Manifest`.
    """

    _open: dict[str, tuple[tuple[int, int, int], Export]] = {}
    _lock = threading.Lock()

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._tokenizer: WordPieceTokenizer | None = None

    @classmethod
    def open(cls, source: str | Path | Export) -> Export:
        """The export at ``source`` (an ``Export`` is returned as is); typed errors name the
        file and the fix. Parsed once per version of its manifest in this process."""
        if isinstance(source, Export):
            return source
        if not isinstance(source, (str, os.PathLike)):
            raise InputError(
                f"an export is a directory path (str or Path), got {type(source).__name__}"
            )
        path = Path(source)
        key = str(path.resolve())
        with cls._lock:
            stamp = _stamp(path)
            cached = cls._open.get(key)
            if cached is not None and cached[0] == stamp:
                check_files(path, cached[1].manifest)  # files may go without the manifest
                return cached[1]
            export = cls(path, read_manifest(path))
            cls._open[key] = (stamp, export)
            return export

    @classmethod
    def forget(cls, source: str | Path) -> None:
        """Drop a directory from the process's cache (after replacing it wholesale)."""
        with cls._lock:
            cls._open.pop(str(Path(source).resolve()), None)

    @classmethod
    def written(cls, path: str | Path, manifest: Manifest) -> Export:
        """The export whose ``manifest.json`` this process has just written (or swapped in
        with its directory): later :meth:`open` calls get it without reading it back."""
        path = Path(path)
        export = cls(path, manifest)
        with cls._lock:
            cls._open[str(path.resolve())] = (_stamp(path), export)
        return export

    def write(self, manifest: Manifest) -> Path:
        """Replace ``manifest.json`` atomically with ``manifest``; this object (and later
        :meth:`open` calls) see it without reading it back."""
        with self._lock:
            path = manifest.write(self.path)
            self.manifest, self._tokenizer = manifest, None
            self._open[str(self.path.resolve())] = (_stamp(self.path), self)
        return path

    # -- layouts and graphs ---------------------------------------------------------------
    @property
    def layouts(self) -> list[str]:
        """The layouts whose every graph was exported."""
        return self.manifest.layouts

    def layout(self, requested: str | None = None) -> str:
        """``requested``, or the default (fused if exported, else split); typed error when
        the export lacks it."""
        if requested is not None and requested not in LAYOUT_ROLES:
            raise InputError(
                f"layout {requested!r}: use one of {', '.join(LAYOUT_ROLES)} (None: fused if "
                "exported)"
            )
        available = self.layouts
        layout = requested or next((x for x in preferred_layouts() if x in available), "split")
        if layout not in available:
            raise ArtifactError(
                f"{self.path} has no {layout!r} graphs (has: {available or 'none'}); "
                f"re-export with --layout {layout} or pick one of {available}"
            )
        return layout

    def roles(self, layout: str | None = None) -> tuple[str, ...]:
        return LAYOUT_ROLES[self.layout(layout)]

    @property
    def precisions(self) -> tuple[str, ...]:
        """fp32 and every precision quantize added, sorted."""
        return ("fp32", *sorted(self.manifest.precisions))

    def graph(self, role: str, precision: str = "fp32") -> GraphSpec:
        """The graph that runs ``role`` at ``precision`` (typed error naming the fix)."""
        if precision != "fp32" and precision not in self.manifest.precisions:
            from .backends.table import precisions as known

            if not isinstance(precision, str) or precision not in known():  # no command makes it
                raise InputError(
                    f"unknown precision {precision!r}; precisions are {', '.join(known())} "
                    f"(this export has {', '.join(self.precisions)})"
                )
        return self.manifest.graph(role, precision, self.path)

    def graph_path(self, role: str, precision: str = "fp32") -> Path:
        return self.path / self.graph(role, precision).file

    def graph_files(self, precision: str = "fp32") -> dict[str, Path]:
        """Role -> the graph file of every role at ``precision`` (FP32 where not converted)."""
        return self.manifest.graph_files(self.path, precision)

    def execution(self, precision: str, layout: str | None = None) -> str:
        """The manifest's execution precision of ``precision`` ("" for graph precisions)."""
        return next(
            (e for r in self.roles(layout) if (e := self.graph(r, precision).execution)), ""
        )

    def verified(self, precision: str) -> dict[str, Any] | None:
        """``precision``'s scheme and verified-on records (None: none recorded)."""
        return self.manifest.verified.get(precision)

    def verify(self, roles: list[str] | tuple[str, ...], precision: str) -> None:
        """Check the vocabulary and ``roles``' graphs at ``precision`` against their hashes
        (each file hashed once per process until it changes)."""
        verify_files(self.path, self.manifest, roles, precision)

    def tokenizer(self) -> WordPieceTokenizer:
        if self._tokenizer is None:
            self._tokenizer = open_tokenizer(self.path, self.manifest)
        return self._tokenizer

    def __repr__(self) -> str:
        return f"Export({str(self.path)!r}, layouts={self.layouts}, precisions={self.precisions})"
