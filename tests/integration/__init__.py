"""Real ``mlsm master`` and ``mlsm agent`` processes on loopback, the real CLI."""
