"""The ``stromalens`` command line. One module per command group; no logic lives here."""

from .app import app, main

__all__ = ["app", "main"]
