"""Unit tests: one module or pure function at a time, real parts where they are cheap."""
