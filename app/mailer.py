"""Sending e-mail over SMTP: one connection per worker, reused across jobs.

STARTTLS (before AUTH) and authentication follow the settings. A broken connection is dropped and
the next message opens a new one; a failure while sending is the caller's to retry.
"""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage

import aiosmtplib

from app.config import Settings


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()  # one SMTP transaction at a time on the shared connection

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.smtp_ca_file or None)

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            start_tls=s.smtp_starttls,
            tls_context=self._tls_context() if s.smtp_starttls else None,
            timeout=5,
        )
        await client.connect()
        if s.smtp_username:
            await client.login(s.smtp_username, s.smtp_password)
        self._client = client
        return client

    async def send(self, message: EmailMessage) -> None:
        async with self._lock:
            client = await self._connected()
            try:
                await client.send_message(message)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError):
                self._client = None
                raise

    async def close(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.quit()
            except aiosmtplib.SMTPException:
                self._client.close()
        self._client = None
