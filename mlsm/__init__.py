"""mlsm, the ML Server Manager.

Public pieces: :mod:`mlsm.config` (settings), :mod:`mlsm.errors` (the exception tree),
:mod:`mlsm.wire` (every struct that crosses a process boundary), :mod:`mlsm.client`
(the typed HTTP client). The master lives in :mod:`mlsm.master`.
"""

__version__ = "0.1.0"

#: Version of the agent <-> master wire protocol. Bumped on incompatible changes;
#: the master accepts agents whose protocol lies in [MIN_AGENT_PROTOCOL, PROTOCOL_VERSION].
PROTOCOL_VERSION = 4
MIN_AGENT_PROTOCOL = 1

#: The first protocol version that knows each command added after version 1; the master
#: sends such a command only to agents that speak at least that version.
COMMAND_SINCE = {
    "sweep_job_dirs": 3,
    "purge_job_dir": 3,
    "list_outputs": 3,
    "outputs_manifest": 3,
    "serve_outputs": 3,
    "bulk_manifest": 3,
    "bulk_serve": 3,
    "bulk_receive": 3,
    "sync_project": 3,
    "remove_project": 3,
    "bulk_listen": 3,
    "copy_project": 3,
    "job_notice": 4,
    "open_channel": 4,
}
#: The first protocol version whose agents run jobs in shipped code and projects
#: (StartJob's ``code`` and ``project``); the scheduler places such jobs only there.
CODE_SINCE = 3
