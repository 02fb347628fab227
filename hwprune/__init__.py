"""hwprune: hardware-aware structured pruning and export compiler for PyTorch models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hwprune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
