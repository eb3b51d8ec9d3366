"""Checks run on a machine with an NVIDIA GPU (NVML through the real probe)."""
