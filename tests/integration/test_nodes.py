"""Nodes against a real master and real agents: joining, node identity, the agent protocol's
edges, telemetry, GPU foreign processes, node states, drain/resume/remove, labels, history
and /metrics."""

from __future__ import annotations

import json
import signal
import stat
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w
from mlsm.wire import api
from tests.integration.lab import LEASE_S, STALE_S, Lab, kill
from tests.support.wait import wait_until

AGENT_EXIT_DEADLINE_S = 30.0
FOREIGN_PID = 4242


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("nodes")) as lab:
        lab.start_master()
        lab.start_agent("a", labels=("rack=r1", "gpu=a100"))
        lab.start_agent("b", labels=("rack=r2",))
        yield lab


def register_raw(lab: Lab, name: str, token: str) -> w.RegisterReply:
    """Join a node through the agent protocol directly (a node with no agent process)."""
    r = lab.agent_call(
        "register",
        w.RegisterRequest(protocol=PROTOCOL_VERSION, join_token=token, name=name),
        None,
    )
    assert r.status_code == 200, r.content
    return w.decode_register_reply(r.content)


def agent_error(r: object) -> w.AgentError:
    return w.decode_agent_error(r.content)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- joining
def test_join_token_create_prints_the_token_once_with_ttl_and_uses(lab: Lab) -> None:
    res = lab.cli("join-token", "create", "--ttl", "2h", "--uses", "3", "--json")
    assert res.returncode == 0, res.stderr
    created = msgspec.convert(res.json(), api.JoinTokenCreated)
    assert created.token.startswith("mlsm_j_")
    assert created.info.uses == 3 and created.info.used == 0
    assert created.info.expires_at - created.info.created_at == pytest.approx(7200, abs=1)

    plain = lab.cli("join-token", "create", "--ttl", "10m")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().startswith("mlsm_j_") and len(plain.stdout.splitlines()) == 1
    listed = lab.cli("join-token", "list", "--json").json()
    assert created.info.id in [t["id"] for t in listed]
    assert created.token not in json.dumps(listed)  # shown once, stored hashed


def test_agent_joins_once_keeps_its_secret_0600_and_a_restart_reuses_it(lab: Lab) -> None:
    token = lab.cli("join-token", "create", "--uses", "1").stdout.strip()
    agent = lab.start_agent("j1", token=token)
    secret_file = agent.data_dir / "node-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert agent.secret.startswith("mlsm_n_")
    first = lab.node("j1")

    assert lab.stop_agent("j1", signal.SIGTERM) == 0
    # The token is used up now; the agent must not need it again.
    lab.start_agent("j1", token=token)
    again = lab.node("j1")
    assert again.id == first.id
    assert [n.name for n in lab.nodes()].count("j1") == 1
    assert agent.secret == secret_file.read_text().strip()
    tokens = lab.admin.call("GET", "/api/v1/join-tokens", type=list[api.JoinToken])
    assert [t.used for t in tokens if t.uses == 1 and t.used == 1]
    lab.stop_agent("j1")


def test_expired_used_up_and_revoked_tokens_are_refused_and_the_agent_exits_saying_why(
    lab: Lab,
) -> None:
    expiring = lab.cli("join-token", "create", "--ttl", "1s", "--json").json()
    used_up = lab.join_token(uses=1)
    register_raw(lab, "takes-the-only-use", used_up)
    revoked = lab.cli("join-token", "create", "--json").json()
    res = lab.cli("join-token", "revoke", str(revoked["info"]["id"]))
    assert res.returncode == 0, res.stderr
    wait_until(lambda: time.time() > expiring["info"]["expires_at"], 5, "the token to expire")

    cases = {
        "x-expired": (expiring["token"], "expired"),
        "x-used-up": (used_up, "used up"),
        "x-revoked": (revoked["token"], "revoked"),
    }
    procs = {
        name: lab.start_agent(name, token=token, wait=False) for name, (token, _) in cases.items()
    }
    for name, (_, word) in cases.items():
        agent = procs[name]
        code = agent.proc.wait(timeout=AGENT_EXIT_DEADLINE_S)
        out = agent.output()
        assert code != 0, out
        assert "refused to register" in out and word in out, out
        assert "Traceback" not in out, out
        assert not (agent.data_dir / "node-secret").exists()
    names = {n.name for n in lab.nodes()}
    assert not names & set(cases)


# ---------------------------------------------------------------- node identity
def test_a_node_secret_authenticates_that_node_only(lab: Lab) -> None:
    token = lab.join_token(uses=2)
    a = register_raw(lab, "fake-a", token)
    b = register_raw(lab, "fake-b", token)
    assert a.node_id != b.node_id and a.node_secret != b.node_secret

    # B comes online with one GPU-less heartbeat; a job is placed there.
    hb_b = w.Heartbeat(protocol=PROTOCOL_VERSION, host=w.HostSample(cpu_percent=11.0))
    assert lab.agent_call("heartbeat", hb_b, b.node_secret).status_code == 200
    job_id = lab.submit("--node", "fake-b", "--", "true")
    lab.wait_job(job_id, "assigned")

    # A heartbeat with A's secret updates A and never B.
    hb_a = w.Heartbeat(
        protocol=PROTOCOL_VERSION, host=w.HostSample(cpu_percent=77.0, mem_total=1 << 30)
    )
    assert lab.agent_call("heartbeat", hb_a, a.node_secret).status_code == 200
    assert lab.node("fake-a").host.cpu_percent == 77.0  # type: ignore[union-attr]
    assert lab.node("fake-b").host.cpu_percent == 11.0  # type: ignore[union-attr]

    # Commands fetched with A's secret never include B's StartJob; B's own poll has it.
    poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0)
    got_a = w.decode_batch(lab.agent_call("commands", poll, a.node_secret).content)
    assert all(not (isinstance(c, w.StartJob) and c.job.job_id == job_id) for c in got_a.commands)
    got_b = w.decode_batch(lab.agent_call("commands", poll, b.node_secret).content)
    assert [c.job.job_id for c in got_b.commands if isinstance(c, w.StartJob)] == [job_id]

    # A log chunk for B's job sent with A's secret is refused, and nothing is stored.
    chunk = w.LogChunk(job_id=job_id, offset=0, data=b"forged\n")
    r = lab.agent_call("logs", chunk, a.node_secret)
    assert r.status_code == 403, r.content
    assert agent_error(r).code == "forbidden"
    assert lab.log(job_id) == b""
    # ... while B may ship it.
    r = lab.agent_call("logs", chunk, b.node_secret)
    assert r.status_code == 200 and w.decode_log_ack(r.content).next_offset == len(b"forged\n")

    # Events with A's secret about B's job change nothing.
    report = w.JobReport(job_id=job_id, state="exited", exit_code=0, end_kind="exit")
    ev = w.JobEvents(protocol=PROTOCOL_VERSION, jobs=[report])
    assert lab.agent_call("events", ev, a.node_secret).status_code < 500
    assert lab.job(job_id).state == "assigned"
    lab.cli("cancel", str(job_id))


def test_a_registered_nodes_name_is_never_handed_to_another_join(lab: Lab) -> None:
    """A join-token holder who names an offline node neither takes it over nor its jobs."""
    victim = register_raw(lab, "victim", lab.join_token())
    assert lab.node_state("victim") == "offline"  # it never heartbeated
    job_id = lab.submit("--node", "victim", "-e", "SECRET=pinned", "--", "true")

    thief = lab.join_token()
    r = lab.agent_call(
        "register",
        w.RegisterRequest(protocol=PROTOCOL_VERSION, join_token=thief, name="victim"),
        None,
    )
    assert r.status_code == 409, r.content
    err = agent_error(r)
    assert err.code == "node_name_taken"
    assert "belongs to a registered node" in err.message
    assert "mlsm node remove victim" in err.message and "--name" in err.message

    # The real node keeps its identity, its secret and its job; nothing leaked to the thief.
    assert lab.node("victim").id == victim.node_id
    hb = w.Heartbeat(protocol=PROTOCOL_VERSION)
    assert lab.agent_call("heartbeat", hb, victim.node_secret).status_code == 200
    lab.wait_job(job_id, "assigned")
    poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0)
    batch = w.decode_batch(lab.agent_call("commands", poll, victim.node_secret).content)
    starts = [c.job for c in batch.commands if isinstance(c, w.StartJob)]
    assert [(j.job_id, j.env.get("SECRET")) for j in starts] == [(job_id, "pinned")]
    # The refused join did not spend the token: it still joins under a free name.
    assert register_raw(lab, "not-the-victim", thief).node_id != victim.node_id

    # An agent process refused this way exits saying why, in one line, without a secret.
    thief_dir = lab.root / "agents" / "victim-thief"
    agent = lab.start_agent("victim", token=lab.join_token(), wait=False, data_dir=thief_dir)
    assert agent.proc.wait(timeout=AGENT_EXIT_DEADLINE_S) != 0
    out = agent.output()
    assert "the master refused to register this node: the name 'victim' belongs to" in out, out
    assert "Traceback" not in out
    assert not (agent.data_dir / "node-secret").exists()
    lab.cli("cancel", str(job_id))


def test_a_removed_nodes_name_can_be_joined_again_as_a_new_node(lab: Lab) -> None:
    long_name = "r" * 63  # the longest name: the removed row must still fit its column
    for name in ("gone", long_name):
        old = register_raw(lab, name, lab.join_token())
        res = lab.cli("node", "remove", name, "--yes")
        assert res.returncode == 0, res.stderr
        new = register_raw(lab, name, lab.join_token())
        assert new.node_id != old.node_id and new.name == name
        assert lab.node(name).id == new.node_id
        hb = w.Heartbeat(protocol=PROTOCOL_VERSION)
        assert lab.agent_call("heartbeat", hb, old.node_secret).status_code == 401
        assert lab.agent_call("heartbeat", hb, new.node_secret).status_code == 200
        assert [n.name for n in lab.nodes()].count(name) == 1


def test_an_unknown_or_missing_node_secret_is_401(lab: Lab) -> None:
    hb = w.Heartbeat(protocol=PROTOCOL_VERSION)
    for secret in (None, "mlsm_n_not-a-secret", lab.token):
        r = lab.agent_call("heartbeat", hb, secret)
        assert r.status_code == 401, (secret, r.content)


def test_an_unsupported_protocol_version_gets_426_protocol_mismatch(lab: Lab) -> None:
    secret = lab.agents["a"].secret
    r = lab.agent_call("heartbeat", w.Heartbeat(protocol=999), secret)
    assert r.status_code == 426, r.content
    err = agent_error(r)
    assert err.code == "protocol_mismatch"
    assert "999" in err.message and str(PROTOCOL_VERSION) in err.message
    assert "same mlsm version" in err.message
    for path, body in (
        ("commands", w.CommandPoll(protocol=999, wait_s=0)),
        ("events", w.JobEvents(protocol=999, jobs=[])),
    ):
        r = lab.agent_call(path, body, secret)
        assert r.status_code == 426 and agent_error(r).code == "protocol_mismatch", path
    r = lab.agent_call(
        "register",
        w.RegisterRequest(protocol=999, join_token=lab.join_token(), name="future"),
        None,
    )
    assert r.status_code == 426 and agent_error(r).code == "protocol_mismatch"


AGENT_ROUTES = ("register", "heartbeat", "commands", "events", "logs", "datasets")
BAD_BODIES = {
    "empty": b"",
    "not msgpack": b"\xc1\xc1\xc1",
    "truncated": msgspec.msgpack.encode({"protocol": 1, "jobs": [1, 2, 3]})[:-2],
    "wrong shape": msgspec.msgpack.encode([1, 2, 3]),
    "wrong types": msgspec.msgpack.encode(
        {
            "protocol": "one",
            "job_id": "x",
            "offset": -1,
            "data": 5,
            "jobs": "no",
            "wait_s": 1e9,
            "full": "yes",
            "upsert": 3,
            "name": 7,
            "join_token": [],
        }
    ),
    "huge declared length": b"\xdb\xff\xff\xff\xff",
    "deep nesting": b"\x91" * 100_000,
    "over the configured limit": b"\x00" * (5 << 20),
    "over the hard limit": b"\x00" * (9 << 20),
}


@pytest.mark.parametrize("route", AGENT_ROUTES)
def test_malformed_or_oversized_messagepack_is_a_4xx_never_a_500(lab: Lab, route: str) -> None:
    secret = lab.agents["b"].secret
    for what, body in BAD_BODIES.items():
        r = lab.agent_call(route, body, secret)
        assert 400 <= r.status_code < 500, (route, what, r.status_code, r.content[:200])
        if what.startswith("over"):
            assert r.status_code == 413, (route, what)
    # a log chunk over its own bound
    if route == "logs":
        big = msgspec.msgpack.encode(
            {"job_id": 1, "offset": 0, "data": b"x" * (w.MAX_LOG_CHUNK + 1)}
        )
        r = lab.agent_call(route, big, secret)
        assert r.status_code == 400, r.content
    assert lab.master_proc is not None and lab.master_proc.poll() is None
    assert lab.node_state("b") == "online"


# ---------------------------------------------------------------- telemetry
def test_telemetry_shows_in_nodes_json_and_node_show(lab: Lab) -> None:
    res = lab.cli("nodes", "--json")
    assert res.returncode == 0, res.stderr
    nodes = {n["name"]: n for n in res.json()}
    a = msgspec.convert(nodes["a"], api.Node)
    assert a.state == "online"
    assert a.info.hostname and a.info.cpu_cores > 0 and a.info.mem_total > 0
    assert a.info.gpu_probe == "simulated"
    assert a.host is not None and a.host.mem_total > 0 and a.host.ts > 0
    assert [g.sample.index for g in a.gpus] == [0, 1]
    for g in a.gpus:
        assert g.sample.simulated and g.sample.name.startswith("Simulated A100")
        assert g.sample.mem_total == 80 << 30 and g.sample.power_limit_w > 0

    show = lab.cli("node", "show", "a")
    assert show.returncode == 0, show.stderr
    assert "(SIMULATED)" in show.stdout
    gpu_lines = [ln for ln in show.stdout.splitlines() if ln.startswith("GPU ")]
    assert len(gpu_lines) == 2 and all("(simulated)" in ln for ln in gpu_lines)
    assert a.info.hostname in show.stdout


def test_node_show_gives_every_figure_a_unit(lab: Lab) -> None:
    def history_lines() -> list[str] | None:
        out = lab.cli("node", "show", "a").stdout.splitlines()
        if "last 15 min (mean / max):" not in out:
            return None
        rows = out[out.index("last 15 min (mean / max):") + 1 :]
        return rows if any(r.split()[0] == "gpu0.temp" for r in rows) else None

    rows = wait_until(history_lines, what="node a's history in `node show`")
    units = {r.split()[0]: r.split("/", 1)[1].split(None, 1)[1] for r in rows}
    assert units["cpu"] == "% CPU" and units["mem"] == "% of memory", units
    assert units["gpu0.mem"] == "% of memory" and units["gpu0.util"] == "% busy"
    assert units["gpu0.temp"] == "°C" and units["gpu0.power"] == "W"
    show = lab.cli("node", "show", "a").stdout
    gpu0 = next(ln for ln in show.splitlines() if ln.startswith("GPU 0 "))
    assert "GiB" in gpu0 and "RAM" in show


def _gpu_block(text: str, index: int) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"GPU {index} "))
    block = [lines[start]]
    for ln in lines[start + 1 :]:
        if not ln.startswith(" "):
            break
        block.append(ln)
    return block


def test_a_foreign_gpu_process_is_named_and_its_gpu_is_not_scheduled(lab: Lab) -> None:
    agent = lab.start_agent("f1")
    control = agent.data_dir / "simulated-gpus.json"
    control.write_text(
        json.dumps(
            {
                "foreign": [
                    {"index": 0, "pid": FOREIGN_PID, "user": "bob", "used_mem": 2_000_000_000}
                ]
            }
        )
    )

    def foreign_seen() -> bool:
        gpus = lab.node("f1").gpus  # empty until the agent's first report
        return (
            bool(gpus)
            and gpus[0].foreign
            and any(p.user == "bob" for p in gpus[0].sample.processes)
        )

    wait_until(foreign_seen, what="GPU 0 of f1 to show bob's process")
    show = lab.cli("node", "show", "f1").stdout
    block = _gpu_block(show, 0)
    assert "FOREIGN" in block[0], show
    assert any(f"pid {FOREIGN_PID}" in ln and "user bob" in ln for ln in block[1:]), show
    assert not any("bob" in ln for ln in _gpu_block(show, 1)), show

    two = lab.submit("--gpus", "2", "--node", "f1", "--", "true")
    one = lab.submit("--gpus", "1", "--node", "f1", "--", "sleep", "1")
    assert lab.wait_job(one, ("running", "succeeded")).gpu_indices == [1]
    waiting = lab.job(two)
    assert waiting.state == "queued"
    assert "free" in waiting.reason, waiting.reason
    # bob leaves: the 2-GPU job can run once the 1-GPU one is done
    control.write_text(json.dumps({"foreign": []}))
    done = lab.wait_job(two, timeout=30)
    assert done.state == "succeeded" and done.gpu_indices == [0, 1]
    lab.stop_agent("f1")


# ---------------------------------------------------------------- node states
def test_a_killed_agent_goes_stale_then_offline_and_comes_back_with_the_same_id(lab: Lab) -> None:
    agent = lab.start_agent("k1")
    node_id = lab.node("k1").id
    killed_at = time.monotonic()
    kill(agent.proc, signal.SIGKILL)
    seen: list[str] = []

    def offline() -> bool:
        st = lab.node_state("k1")
        if st and (not seen or seen[-1] != st):
            seen.append(st)
        return st == "offline"

    wait_until(offline, LEASE_S * 3, "k1 to go offline", poll_s=0.1)
    assert seen[-2:] == ["stale", "offline"], seen
    assert time.monotonic() - killed_at >= STALE_S
    lab.start_agent("k1")  # same data dir: same secret
    assert lab.node("k1").id == node_id
    assert [n.name for n in lab.nodes()].count("k1") == 1
    lab.stop_agent("k1")


def _audit(lab: Lab, action: str) -> list[api.AuditEntry]:
    return lab.admin.call(
        "GET", "/api/v1/audit", params={"action": action}, type=list[api.AuditEntry]
    )


def test_drain_resume_and_remove_with_force_and_audit(lab: Lab) -> None:
    agent = lab.start_agent("d1")
    res = lab.cli("node", "drain", "d1")
    assert res.returncode == 0 and "draining" in res.stdout, res.stderr
    assert lab.node("d1").state == "draining"
    job = lab.submit("--node", "d1", "--", "sleep", "60")
    wait_until(lambda: "draining" in lab.job(job).reason, what="the job to say d1 is draining")
    assert lab.job(job).state == "queued"

    assert lab.cli("node", "resume", "d1").returncode == 0
    lab.wait_job(job, "running")

    refused = lab.cli("node", "remove", "d1", "--yes")
    assert refused.returncode != 0
    assert "--force" in refused.stderr and str(job) in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert lab.node_state("d1") == "online"

    res = lab.cli("node", "remove", "d1", "--yes", "--force")
    assert res.returncode == 0, res.stderr
    assert "d1" not in {n.name for n in lab.nodes()}
    ended = lab.wait_job(job)
    assert ended.state == "interrupted" and "removed" in ended.reason, ended
    # the job does not run on behind the master's back: the agent was told to stop it
    marker = f"[mlsm] job {job} cancelled: node d1 was removed".encode()
    wait_until(lambda: marker in agent.job_log(job), what="the job on d1 to be stopped")

    removes = _audit(lab, "node.remove")
    assert [(e.outcome, e.target, e.details.get("force")) for e in removes[-2:]] == [
        ("failed", "node:d1", False),
        ("ok", "node:d1", True),
    ]
    assert all(e.actor == "root" for e in removes[-2:])
    assert [e.target for e in _audit(lab, "node.drain")][-1] == "node:d1"
    assert [e.target for e in _audit(lab, "node.resume")][-1] == "node:d1"
    lab.stop_agent("d1")


# ---------------------------------------------------------------- labels, history, metrics
def test_labels_are_stored_and_filter_the_node_list(lab: Lab) -> None:
    def names(*labels: str) -> list[str]:
        args = [x for lab_ in labels for x in ("--label", lab_)]
        res = lab.cli("nodes", "--json", *args)
        assert res.returncode == 0, res.stderr
        return sorted(n["name"] for n in res.json())

    assert lab.node("a").labels == {"rack": "r1", "gpu": "a100"}
    assert names("rack=r2") == ["b"]
    assert names("rack=r1", "gpu=a100") == ["a"]
    assert names("rack=r1", "gpu=h100") == []
    table = lab.cli("nodes", "--label", "gpu=a100").stdout
    assert "rack=r1" in table and "\nb " not in table


def test_history_has_series_with_points(lab: Lab) -> None:
    def full() -> api.NodeHistory | None:
        h = lab.admin.call(
            "GET", "/api/v1/nodes/a/history", params={"window": 60}, type=api.NodeHistory
        )
        ok = all(len(h.series.get(k, [])) >= 2 for k in ("cpu", "mem", "gpu0.util", "gpu1.mem"))
        return h if ok else None

    h = wait_until(full, what="two points of every series")
    assert h.node == "a"
    now = time.time()
    for key in ("cpu", "mem", "gpu0.util", "gpu0.mem", "gpu0.temp", "gpu0.power", "gpu1.util"):
        pts = h.series[key]
        assert all(now - 60 <= p.ts <= now + 1 for p in pts), key
        assert all(p.max >= p.mean for p in pts), key
    assert all(p.mean > 0 for p in h.series["gpu0.power"])


def test_metrics_are_prometheus_text_with_node_and_gpu_gauges(lab: Lab) -> None:
    import httpx

    r = httpx.get(f"{lab.url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    up = {s.labels["node"]: s.value for s in families["mlsm_node_up"].samples}
    assert up["a"] == 1.0 and up["b"] == 1.0
    for name in (
        "mlsm_gpu_utilization_percent",
        "mlsm_gpu_memory_used_bytes",
        "mlsm_gpu_memory_total_bytes",
        "mlsm_gpu_temperature_celsius",
        "mlsm_gpu_power_watts",
    ):
        samples = [s for s in families[name].samples if s.labels["node"] == "a"]
        assert sorted(s.labels["gpu"] for s in samples) == ["0", "1"], name
        assert all(s.labels["simulated"] == "true" for s in samples), name
        assert all(s.value >= 0 for s in samples), name
    totals = [s.value for s in families["mlsm_gpu_memory_total_bytes"].samples]
    assert (80 << 30) in totals


# ---------------------------------------------------------------- the overview's changes
def _overview(lab: Lab, since: str | None = None) -> api.LabOverview:
    path = "/api/v1/overview" + (f"?since={since}" if since is not None else "")
    return lab.admin.call("GET", path, type=api.LabOverview)


def test_the_overview_since_a_cursor_answers_new_changed_and_removed_nodes(lab: Lab) -> None:
    """What the dashboard polls: after a cursor, a joined node, its state changing (by a
    heartbeat, by time passing: stale) and its removal each show in the next answer."""
    first = _overview(lab)
    assert first.full and first.cursor

    def changed_row(cursor: str, name: str) -> tuple[api.LabOverview, api.NodeRow] | None:
        reply = _overview(lab, cursor)
        assert not reply.full, "a fresh cursor of this master is answered with changes"
        rows = {r.name: r for r in reply.nodes}
        return (reply, rows[name]) if name in rows else None

    joined = register_raw(lab, "ov-new", lab.join_token())
    reply, row = wait_until(lambda: changed_row(first.cursor, "ov-new"), 10, "the new row")
    assert row.state == "offline"
    hb = w.Heartbeat(protocol=PROTOCOL_VERSION)
    assert lab.agent_call("heartbeat", hb, joined.node_secret).status_code == 200
    reply, row = wait_until(lambda: changed_row(reply.cursor, "ov-new"), 10, "a heartbeat")
    assert row.state in ("online", "stale")  # stale once STALE_S passed without another
    if row.state == "online":
        reply, row = wait_until(lambda: changed_row(reply.cursor, "ov-new"), 10, "stale")
        assert row.state == "stale"
    assert lab.cli("node", "remove", "ov-new", "--yes").returncode == 0
    gone = wait_until(lambda: (r := _overview(lab, reply.cursor)).removed and r, 10, "the removal")
    assert gone.removed == ["ov-new"] and "ov-new" not in {r.name for r in gone.nodes}
    assert "ov-new" not in {r.name for r in _overview(lab).nodes}


def test_an_overview_cursor_it_cannot_answer_gets_the_whole_list(lab: Lab) -> None:
    whole = {r.name for r in _overview(lab).nodes}
    for cursor in ("0000.1", "junk", ""):  # another master's (or before a restart), bad
        reply = _overview(lab, cursor)
        assert reply.full and {"a", "b"} <= {r.name for r in reply.nodes} <= whole | {"a", "b"}
    r = httpx.get(
        f"{lab.url}/api/v1/overview",
        params={"since": "x" * 65},
        headers={"Authorization": f"Bearer {lab.token}"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "validation_error", r.text
