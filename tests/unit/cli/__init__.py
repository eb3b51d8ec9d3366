"""Unit tests of the CLI's own parsing."""
