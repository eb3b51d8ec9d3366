"""``python -m mlsm``: the same command as ``mlsm``."""

from mlsm.cli import main

main()
