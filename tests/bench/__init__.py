"""Benchmarks: scripts that print figures (run each directly; pytest skips this folder)."""
