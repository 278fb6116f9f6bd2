"""The README's commands that it marks runnable, run as written from the repository root
(a user's fresh shell after ``scripts/install.sh``): each exits 0. A block is marked by a
``<!-- runnable ... -->`` comment right above its fence; "the first line" runs only that."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- runnable:(.*?)-->\s*```bash\n(.*?)```", re.S)


def runnable_commands() -> list[str]:
    """Every marked block's commands (continuation lines joined), in README order."""
    commands = []
    for note, block in MARK.findall((ROOT / "README.md").read_text()):
        joined = block.replace("\\\n", " ")
        lines = [c.strip() for c in joined.splitlines()]
        lines = [c for c in lines if c and not c.startswith("#")]
        commands += lines[:1] if "first line" in " ".join(note.split()) else lines
    return commands


def test_the_readme_marks_its_quick_commands():
    commands = runnable_commands()
    assert len(commands) >= 3, commands
    assert all(c.startswith(".venv/bin/") for c in commands), commands


@pytest.mark.parametrize("command", runnable_commands())
def test_a_runnable_readme_command_works_as_written(command):
    if not (ROOT / ".venv" / "bin" / "dit-deploy").exists():
        pytest.skip("no .venv here: scripts/install.sh makes it (CI always has it)")
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, f"{command}\\n{r.stdout[-1500:]}\\n{r.stderr[-1500:]}"
