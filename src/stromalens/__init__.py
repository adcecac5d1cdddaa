"""stromalens: decode the tumour microenvironment from routine images.

Importing the package is cheap: torch, openslide and radiomics are imported lazily by the
modules that need them, never here.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stromalens")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
