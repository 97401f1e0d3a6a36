"""Soft labels: generation from experts, transforms, diagnostics."""
