"""The ``softlabels`` command: thin wrappers over the library (each command is one library call).

One module per command group (``jobs``, ``catalog``, ``studies``, ``budget``); :func:`main` is the one error
boundary: a user-facing failure (bad input, a file or folder that cannot be used, a corrupt file) is one line
on stderr and exit status 2; anything else is an internal bug and keeps its traceback.
``SOFTLABELS_DEBUG=1`` shows the traceback of user-facing failures too.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
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


def user_message(e: BaseException) -> str | None:
    """The one line a user-facing failure prints, or None for an internal bug."""
    if isinstance(e, OSError) and e.filename is not None and str(e).startswith("[Errno"):
        what = {PermissionError: "is not writable or readable", IsADirectoryError: "is a folder, not a file",
                NotADirectoryError: "has a file where a folder is needed",
                FileNotFoundError: "does not exist"}.get(type(e), f"cannot be used ({e.strerror})")
        return f"{e.filename} {what}; choose another path (e.g. --out)"
    if isinstance(e, (ValueError, TypeError, OSError, ImportError, sqlite3.Error)):
        return str(e).replace("\n", " ") or type(e).__name__
    return None


def _negative_size(argv: list[str]) -> str | None:
    """argparse reads ``budget -5KB`` as an unknown option; say what is wrong instead."""
    if "budget" in argv:
        for a in argv[argv.index("budget") + 1:]:
            if re.fullmatch(r"-\d[\d.]*\s*[A-Za-z]*", a):
                return f"the budget must be a positive size such as 64KB, got {a}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    negative = _negative_size(argv)
    if negative:
        print(f"softlabels: error: {negative}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is saved; re-run the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None or os.environ.get("SOFTLABELS_DEBUG"):
            raise
        print(f"softlabels: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
