"""``python -m stromalens.cli``: the same entry point as the ``stromalens`` script."""

from .app import main

main()
