"""The installed hwprune's version (a module of its own, so that reading it imports nothing else)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hwprune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
