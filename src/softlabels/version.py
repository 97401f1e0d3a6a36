"""The package version (one place, imported by modules that record it in artifacts)."""

__version__ = "0.1.0"
