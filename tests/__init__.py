"""mlsm's tests, a package tree: every test module has a dotted name of its own
(``tests.unit.agent.test_fsutil``), so two folders may hold files of the same name, and
shared code is imported by that name (``from tests.support.wait import wait_until``).
tests/unit/test_layout.py keeps it so."""
