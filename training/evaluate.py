"""Score a model or an export on a dataset split: ``python training/evaluate.py --help``.
The options and examples live in :mod:`dit_deploy.training.cli`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from dit_deploy.cli import verb_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(verb_main("evaluate")())
