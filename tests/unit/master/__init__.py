"""Unit tests of the master's pure parts and services."""
