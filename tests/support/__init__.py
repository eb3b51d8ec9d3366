"""What the tests share, in one place; every suite imports it as ``tests.support.<module>``.

- :mod:`~tests.support.wait`: the one wait-until helper (sync, async, and through a
  Textual pilot): poll a condition with a deadline, never sleep for it.
- :mod:`~tests.support.env`: the one isolated environment (HOME and XDG dirs of the test's
  own, no ``MLSM_*`` setting of the caller) for child processes and for the test process.
- :mod:`~tests.support.procs`: free loopback ports, ending a process, killing what a lab
  left running.
- :mod:`~tests.support.master`: the one way to start a real ``mlsm master`` process
  (:class:`~tests.support.master.MasterProcess`); the integration ``Master``, the
  integration ``Lab``, the dashboard's ``real_master`` and the benchmarks' ``BenchLab``
  are layered on it.
- :mod:`~tests.support.postgres`: a fresh PostgreSQL database per test, module or lab.
- :mod:`~tests.support.ci`: ``require`` (skip on a laptop, fail under ``CI=true``).
- :mod:`~tests.support.fixtures`: the pytest fixtures built on these (PostgreSQL, Docker,
  ``tmp_home``), registered for every suite by ``tests/conftest.py``.
- :mod:`~tests.support.deep_trees`: directory trees deeper than PATH_MAX, and archives.
"""
