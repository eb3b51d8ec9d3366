"""mlsm.redact: a URL's userinfo, query and fragment never reach a message or a log line."""

from __future__ import annotations

import logging

import pytest

from mlsm.redact import (
    HTTP_LOGGERS,
    RedactingFilter,
    redact_http_logs,
    redact_text,
    redact_url,
    url_secrets,
)

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/data/train.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Signature=c0ffee0123456789"
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (PRESIGNED, "https://bucket.s3.amazonaws.com/data/train.tar?***"),
        ("https://u:pw@host:8443/a/b?x=1#frag", "https://***@host:8443/a/b?***"),
        ("http://token@host/a", "http://***@host/a"),
        ("http://host/a#only-a-fragment", "http://host/a?***"),
        ("http://host/a/b.tar", "http://host/a/b.tar"),
        ("http://a@b@host/p?q", "http://***@host/p?***"),
        ("http://[::1]:80/p?q=1", "http://[::1]:80/p?***"),
        ("http://host?q=1", "http://host?***"),
        ("/relative/path?sig=1", "/relative/path?***"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_url_secrets_lists_userinfo_password_query_and_fragment_raw_and_decoded() -> None:
    got = url_secrets("https://alice:p%40ss-word@host/x?sig=a%2Fb&k=v#frag-ment")
    assert "alice:p%40ss-word" in got and "p@ss-word" in got and "p%40ss-word" in got
    assert "sig=a%2Fb&k=v" in got and "sig=a/b&k=v" in got and "frag-ment" in got
    assert url_secrets("https://host/plain") == ()
    assert url_secrets("https://host/x?a=1") == ()  # too short to scrub from free text


def test_redact_text_redacts_every_url_and_the_literal_secrets() -> None:
    text = (
        f"Client error '403 Forbidden' for url '{PRESIGNED}'; retried "
        "http://u:hunter22@mirror/x.tar?t=abcdef and gave up (signature c0ffee0123456789)"
    )
    out = redact_text(text, url_secrets(PRESIGNED))
    assert "c0ffee0123456789" not in out and "AKIAEXAMPLE" not in out
    assert "hunter22" not in out and "abcdef" not in out
    assert "'https://bucket.s3.amazonaws.com/data/train.tar?***'" in out
    assert "http://***@mirror/x.tar?***" in out
    assert redact_text("no url here, what?") == "no url here, what?"


def test_redact_text_with_queries_catches_relative_references() -> None:
    trace = "(b'Location', b'/signed/y?sig=secret-sig'), (b'Content-Length', b'0')"
    assert "secret-sig" in redact_text(trace)
    assert "secret-sig" not in redact_text(trace, queries=True)


def test_the_filter_redacts_records_of_the_http_client_loggers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redact_http_logs()
    redact_http_logs()  # idempotent: one filter per logger
    for name in HTTP_LOGGERS:
        assert sum(isinstance(f, RedactingFilter) for f in logging.getLogger(name).filters) == 1
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").info('HTTP Request: %s %s "%s"', "GET", PRESIGNED, "200 OK")
    logging.getLogger("httpcore.http11").debug(
        "headers=[(b'Location', b'/x?sig=c0ffee0123456789')]"
    )
    assert "c0ffee0123456789" not in caplog.text
    assert "train.tar?***" in caplog.text and "/x?***" in caplog.text
