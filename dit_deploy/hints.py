"""Commands to suggest in messages: one helper, so every hint names a command that the
installed package really has (``dit-deploy <verb>``), quoted so it runs as printed."""

from __future__ import annotations

import shlex
from pathlib import Path


def command(verb: str, *args: object) -> str:
    """``dit-deploy VERB ARGS...``, each argument shell-quoted (paths with spaces survive)."""
    words = ["dit-deploy", verb, *(str(a) if isinstance(a, Path) else f"{a}" for a in args)]
    return " ".join(shlex.quote(w) for w in words)
