"""``mlsm nodes``, ``mlsm node ...`` and ``mlsm join-token ...``: the lab's servers."""

from __future__ import annotations

import time

import click

from mlsm.cli.common import (
    ago,
    client_from,
    human_bytes,
    json_option,
    parse_duration,
    require_role,
    when,
)
from mlsm.cli.output import confirm, echo, emit_json, table
from mlsm.wire import api
from mlsm.wire.agent import NodeInfo
from mlsm.wire.outputs import NodeDisk

#: Seconds of telemetry `mlsm node show` sums up.
SHOW_HISTORY_S = 900


@click.group("join-token")
def join_token() -> None:
    """Create, list and revoke join tokens for agents (admins)."""


@join_token.command("create")
@click.option("--ttl", default="24h", show_default=True, help="How long the token is valid.")
@click.option(
    "--uses",
    type=click.IntRange(1, 10000),
    default=1,
    show_default=True,
    help="How many agents may join with it.",
)
@click.option("--note", default="", help="A note for the list.")
@json_option
@click.pass_context
def join_token_create(ctx: click.Context, ttl: str, uses: int, note: str, as_json: bool) -> None:
    """Create a join token; it is shown once."""
    with client_from(ctx) as c:
        t = c.join_tokens.create(
            api.JoinTokenCreate(ttl_s=parse_duration(ttl), uses=uses, note=note)
        )
        url = c.url
    if as_json:
        emit_json(t)
        return
    echo(t.token)
    echo(
        f"join token {t.info.id}: {uses} use(s), expires {when(t.info.expires_at)}. On each server run:",
        err=True,
    )
    echo(f"  mlsm agent --master {url} --join-token <token>", err=True)


@join_token.command("list")
@json_option
@click.pass_context
def join_token_list(ctx: click.Context, as_json: bool) -> None:
    """List join tokens."""
    with client_from(ctx) as c:
        rows = c.join_tokens.list()
    if as_json:
        emit_json(rows)
        return
    now = time.time()
    table(
        [
            (
                t.id,
                t.created_by,
                when(t.created_at),
                when(t.expires_at),
                f"{t.used}/{t.uses}",
                "revoked"
                if t.revoked
                else "expired"
                if t.expires_at <= now
                else "used up"
                if t.used >= t.uses
                else "valid",
                t.note,
            )
            for t in rows
        ],
        ["ID", "BY", "CREATED", "EXPIRES", "USED", "STATE", "NOTE"],
    )


@join_token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def join_token_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke a join token."""
    with client_from(ctx) as c:
        c.join_tokens.revoke(token_id)
    echo(f"join token {token_id} revoked")


def _gpu_summary(n: api.Node) -> tuple[str, str, str]:
    if not n.gpus:
        return "-", "-", "-"
    busy = sum(1 for g in n.gpus if g.busy)
    ok = [g.sample for g in n.gpus if not g.sample.error]
    util = f"{sum(g.util for g in ok) / len(ok):.0f}%" if ok else "-"
    used = sum(g.mem_used for g in ok)
    total = sum(g.mem_total for g in ok)
    sim = " (sim)" if any(g.sample.simulated for g in n.gpus) else ""
    return f"{busy}/{len(n.gpus)}{sim}", util, f"{human_bytes(used)}/{human_bytes(total)}"


@click.command()
@click.option(
    "--label", "labels", multiple=True, help="Only nodes with this k=v label (repeatable)."
)
@json_option
@click.pass_context
def nodes(ctx: click.Context, labels: tuple[str, ...], as_json: bool) -> None:
    """List nodes: state, GPUs busy/total, GPU use, CPU and memory."""
    with client_from(ctx) as c:
        rows = c.nodes.list(labels=labels)
    if as_json:
        emit_json(rows)
        return
    out = []
    for n in rows:
        gb, gu, gm = _gpu_summary(n)
        h = n.host
        out.append(
            (
                n.name,
                n.state,
                ",".join(f"{k}={v}" for k, v in n.labels.items()) or "-",
                gb,
                gu,
                gm,
                f"{h.cpu_percent:.0f}%" if h else "-",
                f"{human_bytes(h.mem_used)}/{human_bytes(h.mem_total)}" if h else "-",
                n.running_jobs,
                ago(n.last_seen),
            )
        )
    table(
        out,
        [
            "NODE",
            "STATE",
            "LABELS",
            "GPUS BUSY",
            "GPU UTIL",
            "GPU MEM",
            "CPU",
            "MEM",
            "JOBS",
            "LAST SEEN",
        ],
    )
    for n in rows:
        warning = _own_account_warning(n.info)
        if warning:
            echo(f"warning: node {n.name}: {warning}", err=True)


def _own_account_warning(i: NodeInfo) -> str:
    """Jobs that would run as the agent's own account on this node, said plainly ("" none)."""
    if i.job_account:
        who = f"{i.job_account} (uid 0)" if i.job_account == "root" else i.job_account
        return (
            f"every job runs as the agent's own account {who}: users' jobs are not "
            "separated there (run the agent as root without --single-user to run each "
            "user's jobs as their own account)"
        )
    if i.runs_as_root and not i.default_unix_user:
        return (
            "jobs of admins with no Unix account there run as root (map them with "
            "`mlsm user set NAME --unix-user ACCOUNT`)"
        )
    return ""


def _accounts_line(i: NodeInfo) -> str:
    if i.job_account:
        return "WARNING: " + _own_account_warning(i)
    if i.default_unix_user:
        return f"each user's own Unix account; users without one run as {i.default_unix_user}"
    if not i.runs_as_root:  # an agent that predates the account facts
        return "the agent's own account"
    return (
        "each user's own Unix account; members without one wait for an admin to map one; "
        "WARNING: " + _own_account_warning(i)
    )


@click.group()
def node() -> None:
    """Show, drain, resume, label, set or remove a node."""


@node.command("show")
@click.argument("name")
@json_option
@click.pass_context
def node_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Every GPU with its processes and who owns them, and a recent history summary."""
    with client_from(ctx) as c:
        n = c.nodes.get(name)
        hist = c.nodes.history(name, window_s=SHOW_HISTORY_S)
    if as_json:
        emit_json({"node": n, "history": hist})
        return
    i = n.info
    echo(
        f"node      {n.name} ({n.state}{', draining' if n.draining else ''})  last seen {ago(n.last_seen)}"
    )
    echo(
        f"host      {i.hostname}  {i.os}  kernel {i.kernel}  {i.cpu_model} x{i.cpu_cores}  {human_bytes(i.mem_total)} RAM"
    )
    echo(
        f"agent     mlsm {i.agent_version}  GPUs: {i.gpu_probe}{' (SIMULATED)' if i.gpu_probe == 'simulated' else ''}"
        f"{'  driver ' + i.driver_version if i.driver_version else ''}  docker: {('yes, network ' + n.docker_network) if i.docker_available else 'no'}"
    )
    if not i.docker_available and i.docker_error:
        echo(f"docker    unavailable: {i.docker_error}")
    echo(f"run as    {_accounts_line(i)}")
    if n.labels:
        echo("labels    " + ", ".join(f"{k}={v}" for k, v in n.labels.items()))
    if n.host:
        h = n.host
        echo(
            f"now       CPU {h.cpu_percent:.0f}%  load {h.load1:.2f}  mem {human_bytes(h.mem_used)}/{human_bytes(h.mem_total)}  "
            f"net rx {human_bytes(h.net_rx_bps)}/s tx {human_bytes(h.net_tx_bps)}/s"
        )
        for d in h.disks:
            echo(
                f"disk      {d.path} ({d.role}): {human_bytes(d.used)} used of {human_bytes(d.total)}"
            )
    if i.disk is not None and i.disk.measured_at:
        echo(f"mlsm disk {_disk_line(i.disk)}")
    if n.gpu_error:
        echo(f"GPUs      error: {n.gpu_error}")
    for g in n.gpus:
        s = g.sample
        who = (
            f"jobs {','.join(map(str, g.job_ids))}"
            if g.job_ids
            else ("FOREIGN processes" if g.foreign else "free")
        )
        if s.error:
            echo(f"GPU {s.index}     ERROR: {s.error}")
            continue
        echo(
            f"GPU {s.index}     {s.name}{' (simulated)' if s.simulated else ''}  util {s.util:.0f}%  mem {human_bytes(s.mem_used)}/{human_bytes(s.mem_total)}  "
            f"{s.temperature:.0f}C  {s.power_w:.0f}/{s.power_limit_w:.0f} W  -> {who}"
        )
        for p in s.processes:
            owner = f"job {p.job_id}" if p.job_id else f"user {p.user or '?'} (not started by mlsm)"
            echo(f"            pid {p.pid} {p.name or '?'} {human_bytes(p.used_mem)}  {owner}")
    if hist.series:
        echo("last 15 min (mean / max):")
        for key in sorted(hist.series):
            pts = hist.series[key]
            if pts:
                mean = sum(p.mean for p in pts) / len(pts)
                peak = max(p.max for p in pts)
                echo(f"  {key:<14} {mean:6.1f} / {peak:6.1f} {api.history_unit(key)}".rstrip())


def _disk_line(d: NodeDisk) -> str:
    """What mlsm keeps on the node's disk, and the free space where it keeps it."""
    return (
        f"jobs {human_bytes(d.jobs_bytes)} ({d.jobs_count} dirs), "
        f"projects {human_bytes(d.projects_bytes)}, code cache {human_bytes(d.code_cache_bytes)}; "
        f"{human_bytes(d.fs_free)} free of {human_bytes(d.fs_total)} in {d.data_dir}"
    )


def _node_action(ctx: click.Context, name: str, action: str, as_json: bool) -> None:
    with client_from(ctx) as c:
        n = c.nodes.drain(name) if action == "drain" else c.nodes.resume(name)
    if as_json:
        emit_json(n)
    else:
        echo(f"node {n.name}: {'draining: no new jobs' if n.draining else 'accepting jobs'}")


@node.command("drain")
@click.argument("name")
@json_option
@click.pass_context
def node_drain(ctx: click.Context, name: str, as_json: bool) -> None:
    """Stop placing new jobs on a node (running jobs go on)."""
    _node_action(ctx, name, "drain", as_json)


@node.command("resume")
@click.argument("name")
@json_option
@click.pass_context
def node_resume(ctx: click.Context, name: str, as_json: bool) -> None:
    """Place jobs on a drained node again."""
    _node_action(ctx, name, "resume", as_json)


@node.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1)
@click.pass_context
def node_label(ctx: click.Context, name: str, labels: tuple[str, ...]) -> None:
    """Replace a node's labels: mlsm node label NAME k=v ..."""
    from mlsm.cli.agent import _labels

    with client_from(ctx) as c:
        c.nodes.set_labels(name, _labels(labels))
    echo(f"node {name} labels set")


@node.command("set")
@click.argument("name")
@click.option(
    "--docker-network",
    metavar="none|host|NAME",
    help="Network mode of the node's container jobs: none (default), host, bridge, "
    "or a network on its engine. Jobs started from now on get it.",
)
@click.option(
    "--label", "labels", multiple=True, help="A k=v label (repeatable; replaces the labels)."
)
@json_option
@click.pass_context
def node_set(
    ctx: click.Context,
    name: str,
    docker_network: str | None,
    labels: tuple[str, ...],
    as_json: bool,
) -> None:
    """Change a node's settings (admins; audited)."""
    from mlsm.cli.agent import _labels

    if docker_network is None and not labels:
        raise click.UsageError("nothing to set: give --docker-network and/or --label")
    body = api.NodeUpdate(docker_network=docker_network, labels=_labels(labels) if labels else None)
    with client_from(ctx) as c:
        n = c.nodes.update(name, body)
    if as_json:
        emit_json(n)
        return
    if docker_network is not None:
        echo(f"node {n.name}: container jobs started from now on use network {docker_network}")
    if labels:
        echo(f"node {n.name} labels set")


@node.command("remove")
@click.argument("name")
@click.option(
    "--force", is_flag=True, help="Remove even while jobs run there (they are interrupted)."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def node_remove(ctx: click.Context, name: str, force: bool, yes: bool) -> None:
    """Remove a node; its agent must join again to come back."""
    with client_from(ctx) as c:
        if not yes:
            require_role(c, "admin", "removing a node")
            confirm(f"Remove node {name}?")
        res = c.nodes.remove(name, force=force)
    extra = f"; interrupted jobs {res.interrupted}" if res.interrupted else ""
    echo(f"node {name} removed{extra}")
