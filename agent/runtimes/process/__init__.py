"""The process runtime: job attempts as plain processes (env kinds process, venv, conda).

One module a responsibility: :mod:`.runtime` (the Runtime face: start, adopt),
:mod:`.launch` (the job's environment, the shim started in a new session), :mod:`.handle`
(one running attempt: poll, stop, its end and report) and :mod:`.shim` (the stdlib-only
supervisor between the agent and the job). The names below are the public face.
"""

from agent.runtimes.process.handle import LOST_WHILE_DOWN, SHIM_DIED, ProcessHandle
from agent.runtimes.process.runtime import ProcessRuntime

__all__ = ["LOST_WHILE_DOWN", "SHIM_DIED", "ProcessHandle", "ProcessRuntime"]
