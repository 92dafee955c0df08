"""The `fxroof` command."""
from fxroof.cli.main import main

__all__ = ["main"]
