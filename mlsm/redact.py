"""Secrets that ride inside URLs, kept out of every message, log line and audit row.

A URL a user gives mlsm (a dataset import, above all) may carry a credential: a
``user:password@`` userinfo, a presigned signature in its query string
(``?X-Amz-Signature=...``), a token in its fragment. Only the code that fetches the URL
sees it whole; everything that turns it into text people or logs can read goes through
this module::

    https://user:pw@host:8443/a/b.tar?X-Amz-Signature=abc#part
        -> https://***@host:8443/a/b.tar?***

- :func:`redact_url` redacts one URL (userinfo -> ``***@``; query and fragment -> ``?***``).
- :func:`redact_text` redacts every URL inside free text (an exception's message, a
  progress report from an agent), and also scrubs given literal secrets wherever they
  appear, for texts that quote a query or a password without its URL.
- :func:`url_secrets` lists those literal secrets of a URL (raw and percent-decoded).
- :class:`RedactingFilter` does the same for a logger's records, and
  :func:`redact_http_logs` puts one on the loggers of httpx and httpcore, whose request
  lines and response-header traces quote URLs (a redirect's ``Location`` included).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "redact_http_logs",
    "redact_text",
    "redact_url",
    "url_secrets",
]

REDACTED = "***"
#: Literal secrets shorter than this are not scrubbed from free text (a one-letter query
#: would wreck every message); URLs in the text are still redacted whatever their length.
MIN_SECRET_LEN = 4
#: Loggers of the HTTP client whose records may quote a URL (a filter on a logger does not
#: apply to its children's records, so each is named).
HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
# scheme://, then anything up to whitespace, a quote or an angle bracket
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>`]+")


def _split(url: str) -> tuple[str, str, str, str]:
    """(``scheme://`` or "", authority, path, query-and-fragment) of a URL-like string."""
    head, sep, tail = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", head):
        head, tail = "", url
    prefix = head + sep if head else ""
    cut = min((i for i in (tail.find("?"), tail.find("#")) if i >= 0), default=len(tail))
    rest, secret = tail[:cut], tail[cut:]
    if not prefix:
        return "", "", rest, secret
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    return prefix, authority, rest[len(authority) :], secret


def redact_url(url: str) -> str:
    """``url`` with its userinfo, query string and fragment replaced by ``***``."""
    prefix, authority, path, secret = _split(url)
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    return prefix + authority + path + (f"?{REDACTED}" if secret else "")


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that must never be shown: userinfo, its password (or a lone
    user part, which is then a token), the query, each of its parameters and their values,
    and the fragment; each raw and percent-decoded, those of MIN_SECRET_LEN or more only."""
    _prefix, authority, _path, secret = _split(url)
    parts: list[str] = []
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        parts += [userinfo, password if colon else user]  # a lone user part is a token
    if secret:
        query, _, fragment = secret[1:].partition("#") if secret[0] == "?" else ("", "", secret[1:])
        parts += [query, fragment]
        for pair in re.split(r"[&;]", query):  # a signature quoted on its own, too
            parts += [pair, pair.partition("=")[2]]
    out: list[str] = []
    for p in parts:
        for v in (p, unquote(p), unquote(p.replace("+", " "))):
            if len(v) >= MIN_SECRET_LEN and v not in out:
                out.append(v)
    return tuple(sorted(out, key=len, reverse=True))  # longest first: no partial leftovers


def redact_text(text: str, secrets: Iterable[str] = (), *, queries: bool = False) -> str:
    """``text`` with every URL in it redacted and every literal ``secrets`` item scrubbed.

    ``queries`` also redacts every ``?...`` run, for machine-made text (an HTTP client's
    trace of a relative ``Location: /x?sig=...``) where a ``?`` is not prose.
    """
    for s in secrets:
        if len(s) >= MIN_SECRET_LEN and s in text:
            text = text.replace(s, REDACTED)
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    if queries and "?" in text:
        text = _QUERY_IN_TEXT.sub(f"?{REDACTED}", text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`redact_text` (``queries=True``): for loggers
    whose records quote URLs, such as ``httpx``'s "HTTP Request: GET <url>" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's problem, not ours
            return True
        redacted = redact_text(message, queries=True)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_http_logs() -> None:
    """Put a :class:`RedactingFilter` on every logger of :data:`HTTP_LOGGERS` (once), so
    their records never carry a URL's secrets, whatever the process's log configuration."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
