"""The package version (one place; inference/pyproject.toml repeats it for packaging, a test checks they agree)."""

__version__ = "0.1.0"
