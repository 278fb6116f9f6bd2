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
import sys
import traceback
from collections.abc import Sequence

from .errors import DITError
from .extras import missing_extra

# the modules that own verbs; one not present in this build is skipped
VERB_MODULES: tuple[str, ...] = (
    "dit_deploy.main_job",
    "dit_deploy.exporters.cli",
    "dit_deploy.precision.cli",
    "dit_deploy.engines.cli",
    "dit_deploy.bench.cli",
    "dit_deploy.serving.cli",
    "dit_deploy.batch.cli",
)

EPILOG = """examples:
  dit-deploy                          # the main job on the bundled model (same as: dit-deploy run)
  dit-deploy run --only bench         # one step of the main job
  dit-deploy <verb> --help            # every verb's options, with defaults and examples
  dit-deploy --debug <verb> ...       # a traceback instead of the one-line error
"""

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The front parser with every verb whose module is present in this install."""
    parser = argparse.ArgumentParser(
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
                continue  # a verb module not (yet) in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not any(a in parser._subparsers._group_actions[0].choices for a in argv):  # type: ignore[union-attr]
        # no verb: the main job (``dit-deploy --out x`` == ``dit-deploy run --out x``)
        globals_only = [a for a in argv if a == "--debug"]
        argv = [*globals_only, "run", *[a for a in argv if a != "--debug"]]
        if any(a in ("-h", "--help") for a in argv):
            parser.print_help()
            return 0
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except DITError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"dit-deploy {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as exc:
        fix = missing_extra(exc)
        if fix is None or args.debug:
            raise
        print(f"dit-deploy {args.verb}: error: {fix}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"dit-deploy {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
