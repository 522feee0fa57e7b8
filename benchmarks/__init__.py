"""Placeholder so the package directory is importable; see README."""
