"""Render a systemd unit for this host's agent (``mlsm agent --print-systemd-unit``).

The unit is ``packaging/systemd/mlsm-agent.service`` (shipped inside the package as
``mlsm/data/mlsm-agent.service``) with this host's settings written as ``Environment=``
lines and ``ExecStart`` pointing at the running ``mlsm`` executable.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from mlsm.config import Settings


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def agent_unit(s: Settings) -> str:
    text = resources.files("mlsm").joinpath("data/mlsm-agent.service").read_text()
    exe = shutil.which("mlsm") or str(Path(sys.argv[0]).resolve())
    env = []
    if s.master:
        env.append(f"Environment=MLSM_MASTER={_quote(s.master)}")
    if s.node_name:
        env.append(f"Environment=MLSM_NODE_NAME={_quote(s.node_name)}")
    if s.dataset_roots:
        env.append(f"Environment=MLSM_DATASET_ROOTS={_quote(':'.join(s.dataset_roots))}")
    if s.labels:
        env.append(
            f"Environment=MLSM_LABELS={_quote(','.join(f'{k}={v}' for k, v in s.labels.items()))}"
        )
    if s.simulate_gpus:
        env.append(f"Environment=MLSM_SIMULATE_GPUS={_quote(s.simulate_gpus)}")
    out = []
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={exe} agent"
        out.append(line)
        if line.startswith("EnvironmentFile="):
            out.extend(env)
    return "\n".join(out) + "\n"
