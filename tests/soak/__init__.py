"""The soak in CI: tests/bench/soak.py for a few minutes (marker ``soak``; not in the
default run)."""
