"""argparse value types and the parser shared by every verb: a bad value is refused while
parsing, before any work starts, in one line with the option's name (argparse adds it), what
was expected and, for a mistyped option or choice, the closest valid one."""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Sequence
from typing import NoReturn


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """A parser of integers in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return parse


def positive_int_list(text: str) -> str:
    """Comma-separated integers >= 1 (``1,4,8``), kept as written for the verb to split."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers such as 1,4,8"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return ",".join(str(v) for v in values)


def auto_or_positive_int(text: str) -> int | None:
    """``auto`` (None: decided by the command, e.g. measured) or an integer >= 1."""
    return None if text.strip().lower() == "auto" else positive_int(text)


def _float_in(low: float, high: float, unit: str = "") -> Callable[[str], float]:
    """A parser of numbers in [low, high] (``unit`` names them in messages)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number{unit}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}]{unit}, got {value}")
        return value

    return parse


fraction = _float_in(0.0, 1.0)
fraction.__doc__ = "A number in [0, 1]."
points = _float_in(0.0, 100.0, " points")
points.__doc__ = "An mIoU change in points, in [0, 100]."
window_seconds = _float_in(0.1, 600.0, " s")
window_seconds.__doc__ = "A measuring window in seconds, in [0.1, 600]."
percentile = _float_in(0.0, 100.0)
percentile.__doc__ = "A percentile, in [0, 100]."


def positive_float(text: str) -> float:
    """A number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is <= 65535, got {value}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # a help text that states its default in words keeps it, once
        text = action.help or ""
        if "(default" in text or "(None:" in text or action.required:  # required: no default
            return text
        return super()._get_help_string(action)


def closest(word: str, candidates: Sequence[str]) -> str | None:
    """The valid spelling nearest to ``word``, or None when none is close (ratio < 0.75)."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return found[0] if found else None


class OneLineParser(argparse.ArgumentParser):
    """argparse with the shape of every dit-deploy error: one line that names the problem,
    the closest valid spelling when there is one, and where the help is; exit 2 (a usage
    error). No usage block above it: ``--help`` has it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{self.suggestion(message)} "
                     f"(see {self.prog} --help)\n")  # fmt: skip

    def suggestion(self, message: str) -> str:
        """``; did you mean X?`` for a mistyped option or choice, else ""."""
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2)) or m.group(2).split(", ")
            best = closest(m.group(1), choices)
            return f"; did you mean '{best}'?" if best else ""
        m = re.search(r"unrecognized arguments: (.*)$", message)
        if m:
            options = [o for a in self._actions for o in a.option_strings]
            for word in m.group(1).split():
                best = closest(word.split("=")[0], options) if word.startswith("-") else None
                if best:
                    return f"; did you mean {best}?"
        return ""
