"""Email through the SMTP server the admin configured (``smtp_*`` settings).

The standard library's :mod:`smtplib` in a worker thread: one connection per message,
STARTTLS when ``smtp_starttls`` (with the system's CA store; a server whose certificate
does not verify is a failed delivery, never a plain-text fallback), login when
``smtp_user`` is set with the password from ``smtp_password`` (environment) or
``smtp_password_file``.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from mlsm.config import Settings
from mlsm.errors import ConfigError

SMTP_TIMEOUT_S = 30.0
SUBJECT_MAX = 200


def smtp_password(settings: Settings) -> str:
    if settings.smtp_password:
        return settings.smtp_password
    if settings.smtp_password_file:
        try:
            return Path(settings.smtp_password_file).expanduser().read_text().strip()
        except OSError as e:
            raise ConfigError(f"setting 'smtp_password_file': cannot read it: {e}") from None
    return ""


def enabled(settings: Settings) -> bool:
    return bool(settings.smtp_host)


def _send(settings: Settings, password: str, msg: EmailMessage) -> None:
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S) as smtp:
        smtp.ehlo()
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if settings.smtp_user:
            smtp.login(settings.smtp_user, password)
        smtp.send_message(msg)


async def send(settings: Settings, to: str, subject: str, body: str) -> str:
    """Send one message; ``""`` when the server took it, else why not."""
    if not enabled(settings):
        return "email is not configured on this master (smtp_host is empty)"
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = to
    msg["Subject"] = " ".join(subject.split())[:SUBJECT_MAX]
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=settings.smtp_from.rpartition("@")[2] or None)
    msg.set_content(body)
    try:
        password = smtp_password(settings)
        await asyncio.to_thread(_send, settings, password, msg)
    except (OSError, smtplib.SMTPException, ConfigError) as e:
        return f"{type(e).__name__}: {e}"[:300]
    return ""
