"""The ``softlabels`` command: thin wrappers over the library (each command is one library call).

One module per command group (``jobs``, ``catalog``, ``studies``, ``budget``); :func:`main` is the one error
boundary: a user-facing failure is one line on stderr and exit status 2, an internal bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import budget, catalog, jobs, studies
from .common import DEFAULT_OUT

__all__ = ["DEFAULT_OUT", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softlabels", description="Learning from a few images with soft labels.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (jobs, catalog, studies, budget):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is saved; re-run the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"softlabels: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
