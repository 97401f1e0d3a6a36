"""Compressed training sets: which images (selection, scores), how they are stored (codecs), the set."""

from . import codecs  # noqa: F401  (every codec module registered, whichever sets module is imported first)
