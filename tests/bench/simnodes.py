"""Simulated nodes for the benchmarks: agents spoken for by a load tool, not run.

Each node is registered through the agent protocol with a join token and then speaks for
itself with its node secret: MessagePack heartbeats with 8 simulated GPUs (built as
``bench_heartbeats.py`` builds them), job reports (``/agent/v1/events``), command polls
and log chunks. Nothing here measures anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent.collectors import HostCollector, SimulatedProbe
from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w
from mlsm.wire.node import NodeInfo

#: Who the simulated nodes run every job as (one shared account: any user's job fits).
JOB_ACCOUNT = "bench"
NODE_CORES = 4096  # large enough that CPU reservations never stop a placement
MSGPACK = {"content-type": w.MSGPACK}


@dataclass
class SimNode:
    name: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {**MSGPACK, "Authorization": f"Node {self.secret}"}


def node_info() -> NodeInfo:
    return NodeInfo(
        hostname="sim",
        cpu_cores=NODE_CORES,
        gpu_probe="simulated",
        runtimes=["process"],
        job_account=JOB_ACCOUNT,
    )


def register(c: httpx.Client, join_token: str, names: list[str]) -> list[SimNode]:
    out = []
    for name in names:
        req = w.RegisterRequest(
            protocol=PROTOCOL_VERSION, join_token=join_token, name=name, info=node_info()
        )
        r = c.post("/agent/v1/register", content=w.encoder.encode(req), headers=MSGPACK)
        r.raise_for_status()
        out.append(SimNode(name, w.decode_register_reply(r.content).node_secret))
    return out


def heartbeat_body(tmp: Path, jobs: list[w.JobReport] | None = None) -> bytes:
    """A heartbeat with this machine's host sample and 8 simulated A100s."""
    hb = w.Heartbeat(
        protocol=PROTOCOL_VERSION,
        seq=1,
        sent_at=time.time(),
        host=HostCollector(tmp).sample(),
        gpus=SimulatedProbe("8xA100-80GB", identity="bench").sample(),
        jobs=jobs or [],
    )
    return w.encoder.encode(hb)


def events_body(reports: list[w.JobReport]) -> bytes:
    return w.encoder.encode(w.JobEvents(protocol=PROTOCOL_VERSION, jobs=reports))


def poll(c: httpx.Client, node: SimNode, ack: list[int]) -> list[w.Command]:
    """One command poll that does not wait; acknowledges ``ack``."""
    body = w.encoder.encode(w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0, ack=ack))
    r = c.post("/agent/v1/commands", content=body, headers=node.headers)
    r.raise_for_status()
    return list(w.decode_batch(r.content).commands)
