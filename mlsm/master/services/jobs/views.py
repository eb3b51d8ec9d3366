"""A job as people see it (:class:`~mlsm.wire.api.Job`), and who may see its private parts."""

from __future__ import annotations

from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.wire import api


def may_see_private(p: Principal, r: JobRow) -> bool:
    """A job's env and log are for its owner and admins."""
    return p.is_admin or p.name == r.user


def output_dir(r: JobRow, data_dir: str) -> str:
    """Where the job's files live on its node (``""`` before it was placed, or while the
    node has not said where its data dir is)."""
    if not r.node or not data_dir:
        return ""
    return f"{data_dir.rstrip('/')}/jobs/{r.id}"


def job_view(
    r: JobRow,
    *,
    reason: str,
    log_size: int,
    show_env: bool,
    data_dir: str = "",
    expected_start: float | None = None,
) -> api.Job:
    spec = r.spec
    return api.Job(
        id=r.id,
        name=r.name,
        user=r.user,
        state=r.state,
        argv=spec.argv,
        created_at=r.created_at,
        priority=r.priority,
        gpus=r.gpus,
        gpu_mem_gib=spec.gpu_mem_gib,
        cpus=spec.cpus,
        mem_gib=spec.mem_gib,
        env_kind=spec.env_kind,
        venv=spec.venv,
        conda=spec.conda,
        image=spec.image,
        workdir=spec.workdir,
        env=spec.env if show_env else None,
        node_req=spec.node,
        labels=spec.labels,
        datasets=spec.datasets,
        after=[d.text() for d in spec.after],
        retries=r.retries,
        attempt=r.attempt,
        timeout_s=spec.timeout_s,
        array_parent=r.array_parent,
        array_index=r.array_index,
        array_throttle=spec.array_throttle,
        node=r.node,
        gpu_indices=list(r.gpu_indices or []),
        reason=reason,
        exit_code=r.exit_code,
        started_at=r.started_at,
        ended_at=r.ended_at,
        log_size=log_size,
        code=spec.code,
        project=spec.project,
        restarted_from=spec.restarted_from,
        idle_exempt=bool(r.idle_exempt),
        idle_warned_at=r.idle_warned_at,
        kind=spec.kind,
        session_keep=spec.session_keep,
        history=[
            api.JobEvent(ts=e[0], state=e[1], message=e[2] if len(e) > 2 else "")
            for e in (r.history or [])
        ],
        output_dir=output_dir(r, data_dir),
        outputs_removed_at=r.outputs_removed_at,
        outputs_removed_why=r.outputs_removed_why or "",
        log_removed_at=r.log_removed_at,
        preemptible=spec.preemptible,
        preempt_grace_s=spec.preempt_grace_s,
        preemptions=r.preemptions or 0,
        expected_start=expected_start if r.state == "queued" else None,
    )
