"""msgspec's validation messages reach people as sentences led by the field they name."""

from __future__ import annotations

import msgspec
import pytest

from mlsm import errors
from mlsm.config import load_settings
from mlsm.wire import api
from mlsm.wire.explain import explain, validation_error


def _failure(data: object, kind: type) -> msgspec.ValidationError:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(data, kind)
    return caught.value


@pytest.mark.parametrize(
    ("data", "kind", "field", "sentence"),
    [
        (
            {"username": "bob", "password": "short"},
            api.UserCreate,
            "password",
            "password: must be at least 8 characters",
        ),
        ({"password": "long-enough"}, api.UserCreate, "username", "username: is required"),
        ({"argv": []}, api.JobSubmit, "argv", "argv: must not be empty"),
        ({"argv": ["x"], "gpus": -1}, api.JobSubmit, "gpus", "gpus: must be at least 0"),
        (
            {"argv": ["x"], "gpus": "two"},
            api.JobSubmit,
            "gpus",
            "gpus: must be a whole number, not text",
        ),
        ({"argv": ["x"], "zzz": 1}, api.JobSubmit, "zzz", "zzz: is not a known field"),
        (
            {"argv": ["x"], "env_kind": "podman"},
            api.JobSubmit,
            "env_kind",
            "env_kind: 'podman' is not one of the allowed values",
        ),
        (
            {"argv": ["x"], "labels": {"": "v"}},
            api.JobSubmit,
            "labels",
            "labels key: must not be empty",
        ),
    ],
)
def test_a_msgspec_failure_becomes_a_sentence_naming_the_field(
    data: object, kind: type, field: str, sentence: str
) -> None:
    exc = _failure(data, kind)
    assert explain(str(exc)) == (field, sentence)
    err = validation_error(exc)
    assert isinstance(err, errors.ValidationError)
    assert (err.message, err.details["path"]) == (sentence, field)


def test_no_sentence_keeps_msgspecs_markup() -> None:
    for data, kind in (
        ({"username": "Bad Name", "password": "long-enough"}, api.UserCreate),
        ({"argv": ["x"], "gpus": 10**6}, api.JobSubmit),
    ):
        _, sentence = explain(str(_failure(data, kind)))
        assert "`" not in sentence and "$." not in sentence and "Expected" not in sentence


def test_a_query_parameter_is_named_by_its_key() -> None:
    assert explain("Expected `str` of length <= 128", "state") == (
        "state",
        "state: must be at most 128 characters",
    )


def test_a_bad_setting_says_what_is_wrong_in_words() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        load_settings(environ={"MLSM_PORT": "70000"}, use_file=False)
    assert caught.value.message == "setting 'port' from environment (MLSM_*): must be at most 65535"
