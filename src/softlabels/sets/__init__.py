"""Compressed training sets: which images (selection, scores), how they are stored (codecs), the set."""
