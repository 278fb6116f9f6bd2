"""Replacing a directory atomically, and cleaning what killed runs left (torch-free).

Work happens in a temporary directory beside the target, named with the writer's PID
(``.NAME.<kind>-<pid>-XXXX``). :func:`swap_in` then renames the old directory aside, renames
the new one in, and deletes the old one. A run killed at any moment leaves either the old
directory or the new one in place; the only window without ``NAME`` is between the two
renames, and :func:`recover` (called before any later read or write) renames the old one
back. Leftovers of dead writers are removed; a live writer's are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from .atomic import umask

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>[a-z0-9]+)-(?P<pid>\d+)-[^/]*$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def work_dir(target: str | Path, kind: str) -> Path:
    """A fresh temporary directory beside ``target`` that names this process as its writer."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{kind}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private (0700); mkdir would not
    return tmp


def _leftovers(target: Path) -> list[tuple[Path, str, int]]:
    if not target.parent.is_dir():
        return []
    found = []
    for entry in target.parent.iterdir():
        m = _LEFTOVER.match(entry.name)
        if m and m["name"] == target.name:
            found.append((entry, m["kind"], int(m["pid"])))
    return found


def recover(target: str | Path, log=None) -> list[Path]:
    """Put back an old directory a killed swap left aside; delete dead writers' leftovers.

    Returns the paths removed or restored.
    """
    target = Path(target)
    touched: list[Path] = []
    for path, kind, pid in _leftovers(target):
        if pid_alive(pid):
            continue
        if kind == "old" and not target.exists():
            os.rename(path, target)
            if log:
                log(f"recovered {target} from an interrupted replace ({path.name})")
        else:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(True)
            if log:
                log(f"removed {path.name}, left by an interrupted run (pid {pid})")
        touched.append(path)
    return touched


def swap_in(new: str | Path, target: str | Path) -> None:
    """Make ``new`` (a directory beside ``target``) become ``target``, replacing any old one."""
    new, target = Path(new), Path(target)
    aside = None
    if target.exists():
        aside = target.parent / f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(target, aside)
    os.rename(new, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def clean_inner_leftovers(directory: str | Path, log=None) -> list[Path]:
    """Delete dead writers' temporaries inside ``directory`` (``.X.<kind>-<pid>-...``)."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        m = _LEFTOVER.match(entry.name)
        if m and not pid_alive(int(m["pid"])):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(True)
            removed.append(entry)
            if log:
                log(f"removed {entry.name}, left by an interrupted run (pid {m['pid']})")
    return removed
