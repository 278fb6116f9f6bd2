"""argparse value types and the parser shared by every verb: a bad value is refused while
parsing, before any work starts, in one line with the option's name (argparse adds it), what
was expected and, for a mistyped option or choice, the closest valid one."""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


def _number(text: str, kind: type, unit: str = "") -> Any:
    """``kind(text)``, or argparse's error naming what was expected."""
    what = "an integer" if kind is int else "a finite number"
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}{unit}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}{unit}")
    return value


def _bounded(
    kind: type, low: float, high: float | None = None, unit: str = "", strict: bool = False
) -> Callable[[str], Any]:
    """A parser of ``kind`` values >= ``low`` (> with ``strict``), and <= ``high`` if given."""

    def parse(text: str) -> Any:
        value = _number(text, kind, unit)
        if high is not None and not low <= value <= high:
            span = f"{low}..{high}" if kind is int else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be in {span}{unit}, got {value}")
        if value < low or (strict and value == low):
            sign = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {sign} {low:g}, got {value}")
        return value

    return parse


def _named(parse: Callable[[str], Any], doc: str) -> Callable[[str], Any]:
    parse.__doc__ = doc
    return parse


positive_int = _named(_bounded(int, 1), "An integer >= 1.")
non_negative_int = _named(_bounded(int, 0), "An integer >= 0.")
positive_float = _named(_bounded(float, 0.0, strict=True), "A number > 0.")
non_negative_float = _named(_bounded(float, 0.0), "A number >= 0.")
fraction = _named(_bounded(float, 0.0, 1.0), "A number in [0, 1].")
points = _named(_bounded(float, 0.0, 100.0, " points"), "An mIoU change in points, in [0, 100].")
window_seconds = _named(
    _bounded(float, 0.1, 600.0, " s"), "A measuring window in s, in [0.1, 600]."
)
percentile = _named(_bounded(float, 0.0, 100.0), "A percentile, in [0, 100].")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """A parser of integers in [low, high]."""
    return _bounded(int, low, high)


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
