"""Batch input of `mlsm submit`: a script's #MLSM directives and job files, read without a
master (the end-to-end behaviour: tests/integration/test_job_commands.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mlsm.cli.arrays import group, span, task_id
from mlsm.cli.batch import read_job_file, read_script, script_argv
from mlsm.errors import ValidationError
from mlsm.wire import api


def test_directives_end_at_the_first_command(tmp_path: Path) -> None:
    p = tmp_path / "run.sh"
    p.write_text(
        "#!/usr/bin/env python3\n\n# note\n#MLSM --gpus 2\n#MLSM\t--name x\n#MLSMX --no\n"
        "print(1)\n#MLSM --gpus 4\n"
    )
    s = read_script(str(p))
    assert s is not None
    assert s.interpreter == ["/usr/bin/env", "python3"]
    assert s.directives == [(4, ["--gpus", "2"]), (5, ["--name", "x"])]


def test_only_a_file_with_a_shebang_is_a_script(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("echo hi\n")
    assert read_script(str(tmp_path / "plain")) is None
    assert read_script(str(tmp_path / "missing")) is None
    assert read_script("python") is None
    (tmp_path / "empty").write_text("#!\ntrue\n")
    with pytest.raises(ValidationError, match="line 1"):
        read_script(str(tmp_path / "empty"))


def test_the_script_runs_as_the_job_sees_it(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "run.sh"
    p.write_text("#!/bin/bash\ntrue\n")
    s = read_script(str(p))
    assert s is not None
    assert script_argv(s, ("a",), str(tmp_path)) == ["/bin/bash", "sub/run.sh", "a"]
    assert script_argv(s, (), None) == ["/bin/bash", str(p)]
    with pytest.raises(ValidationError, match="outside the directory shipped"):
        script_argv(s, (), str(tmp_path / "elsewhere"))


def test_a_job_file_has_commands_and_json_lines() -> None:
    text = b'# c\necho "a b"\n\n{"argv": ["x"], "gpus": 1}\n[1]\n\'open\n'
    jobs, bad = read_job_file(io.BytesIO(text), "f")
    assert [(j.line, j.fields) for j in jobs] == [
        (2, {"argv": ["echo", "a b"]}),
        (4, {"argv": ["x"], "gpus": 1}),
        (5, {"argv": ["[1]"]}),
    ]
    assert len(bad) == 1 and bad[0].startswith("line 6:")
    with pytest.raises(ValidationError, match="no jobs"):
        read_job_file(io.BytesIO(b"# nothing\n"), "f")


def _job(jid: int, state: str, parent: int | None = None, index: int | None = None) -> api.Job:
    return api.Job(
        id=jid, name="n", user="u", state=state, argv=["x"], created_at=0.0,
        array_parent=parent, array_index=index,
    )  # fmt: skip


def test_array_tasks_in_one_state_are_one_row() -> None:
    assert span([5, 0, 1, 2, 3, 7, 8]) == "0-3,5,7-8"
    jobs = [
        _job(1, "running"),
        _job(10, "queued", 10, 0),
        _job(11, "running", 10, 1),
        _job(12, "queued", 10, 2),
        _job(13, "queued", 10, 3),
        _job(20, "queued"),
    ]
    rows = group(jobs)
    assert [(r.id, r.state) for r in rows] == [
        ("1", "running"),
        ("10_[0,2-3]", "queued (3)"),
        ("10_1", "running"),
        ("20", "queued"),
    ]
    assert task_id(jobs[2]) == "10_1"
