"""Tests of mlsm.wire."""
