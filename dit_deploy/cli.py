"""``dit-deploy <verb>``: the one command line.

Each verb lives in the module that owns it, which exposes ``register(subparsers)``: it adds
its sub-parser and sets ``handler`` to a function ``(argparse.Namespace) -> int`` that turns
the options into a dataclass and calls the library. This front only dispatches and turns
errors into one line: a :class:`DITError` exits 1 with its message, bad options exit 2
(argparse), Ctrl-C exits 130, and ``--debug`` (or ``DIT_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from .cli_types import OneLineParser, closest
from .errors import DITError
from .extras import missing_extra

# the modules that own verbs, and their verbs (named when an optional dependency is missing);
# a module not present in this build is skipped
VERBS_OF = {
    "dit_deploy.main_job": ("run",),
    "dit_deploy.exporters.cli": ("export", "validate"),
    "dit_deploy.precision.cli": ("quantize",),
    "dit_deploy.precision.verify_cli": ("verify",),
    "dit_deploy.engines.cli": ("engines",),
    "dit_deploy.segment": ("segment",),
    "dit_deploy.demo": ("demo",),
    "dit_deploy.bench.cli": ("bench",),
    "dit_deploy.runtime.tune_cli": ("tune",),
    "dit_deploy.training.cli": ("train", "evaluate"),
    "dit_deploy.serving.cli": ("serve", "client", "triton-repo", "perf-data"),
    "dit_deploy.batch.cli": ("batch",),
}
VERB_MODULES = tuple(VERBS_OF)

EPILOG = """examples:
  dit-deploy                          # the main job on the bundled model (same as: dit-deploy run)
  dit-deploy run --only bench         # one step of the main job
  dit-deploy <verb> --help            # every verb's options, with defaults and examples
  dit-deploy --debug <verb> ...       # a traceback instead of the one-line error
"""

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The front parser with every verb whose module is present in this install."""
    parser = OneLineParser(
        prog="dit-deploy",
        description="Deploy DIT (referring segmentation): export, precision, engines, "
        "benchmark, serve and batch, from one command line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("DIT_DEBUG") == "1",
        help="print tracebacks (also: DIT_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("dit_deploy"):
                continue  # a verb module not in this build
            fix = missing_extra(exc)
            if fix is None:
                raise
            _unavailable(sub, name, fix)
            continue
        module.register(sub)
    return parser


def _unavailable(sub, module: str, fix: str) -> None:
    """Keep a verb whose module cannot import here: it says which extra it needs."""

    def refuse(args: argparse.Namespace) -> int:
        raise DITError(fix)

    for verb in VERBS_OF.get(module, ()):
        p = sub.add_parser(verb, help=f"(unavailable: {fix})", add_help=True)
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(handler=refuse)


def one_line(exc: BaseException) -> str:
    """The error's message on one line. An error raised in a worker process and re-raised by
    PyTorch's DataLoader carries the worker's whole traceback in its message ("Caught X in
    DataLoader worker process 0. Original Traceback ..."): its own message is the last line."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1].strip()
        return last.split(": ", 1)[1] if re.match(r"^[\w.]+: ", last) else last
    return " ".join(text.split())


def _path_hint(exc: OSError) -> str:
    """The fix for a path the filesystem refused, by what it said."""
    if isinstance(exc, IsADirectoryError):
        return "give a file path there, not a directory"
    if isinstance(exc, PermissionError):
        return "check its permissions, or choose a path you can write"
    return "check the path (a directory that exists, is writable, and is not a file)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is global: accepted before or after the verb
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if argv and not argv[0].startswith("-") and argv[0] not in verbs:
        # `run` takes no positional argument: a first word is meant as a verb
        best = closest(argv[0], list(verbs))
        hint = f"; did you mean '{best}'?" if best else ""
        print(
            f"dit-deploy: error: unknown verb '{argv[0]}'{hint} (verbs: {', '.join(verbs)}; "
            "see dit-deploy --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not argv or (argv[0] not in verbs and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # no verb: the main job (``dit-deploy --out x`` = ``run --out x``)
    if debug:
        argv = ["--debug", *argv]
    args, extras = parser.parse_known_args(argv)
    if extras:  # the verb's own parser names them, with its closest option
        verbs[args.verb].error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return int(args.handler(args) or 0)
    except DITError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"dit-deploy {args.verb}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as exc:
        fix = missing_extra(exc)
        if fix is None or args.debug:
            raise
        print(f"dit-deploy {args.verb}: error: {fix}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # the filesystem refused a read or write (a path the user gave)
        if args.debug:
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"dit-deploy {args.verb}: error: cannot use{where}: {exc.strerror or exc}; "
            f"{_path_hint(exc)}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"dit-deploy {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def verb_main(verb: str) -> Callable[[Sequence[str] | None], int]:
    """``main(argv)`` of one verb: ``verb_main("quantize")(ARGS)`` = ``dit-deploy quantize
    ARGS`` (``argv`` None: the process's arguments). The entry of ``dit-bench`` and of the
    scripts in ``export/`` and ``training/``; ``export/to_onnx.py validate ...`` is
    ``validate``."""

    def run(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        if verb == "export" and args[:1] == ["validate"]:
            return main(args)
        return main([verb, *args])

    run.__doc__ = f"``dit-deploy {verb}``"
    return run


bench_main = verb_main("bench")  # the dit-bench console script

if __name__ == "__main__":
    raise SystemExit(main())
