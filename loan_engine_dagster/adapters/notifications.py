"""Posting alerts to the team's webhook (chat or paging), if one is set."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from urllib.parse import urlsplit

# The whole call, connection to last byte. A webhook that answers slowly must
# not hold the sensor that reports the other runs.
WEBHOOK_DEADLINE_SECONDS = 5.0


class WebhookError(Exception):
    """The webhook did not take the message (refused, error status, or no answer in time)."""


def post_webhook(url: str, payload: dict, deadline_seconds: float = WEBHOOK_DEADLINE_SECONDS) -> None:
    """POST a JSON payload with a `text` field most chat webhooks show as is.
    Raises `WebhookError` on any network or HTTP error or when the answer is not
    complete within `deadline_seconds`; callers decide whether that matters."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("LOAN_ENGINE_WEBHOOK_URL must be an http(s) URL")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    # The socket timeout bounds each wait, not the sum: a server that trickles
    # one byte every few seconds would never trip it. Shutting the socket at the
    # deadline wakes whatever read is blocked, so the whole call is bounded.
    connection = connection_class(parts.hostname, parts.port, timeout=deadline_seconds)
    expired = threading.Event()

    def stop() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(deadline_seconds, stop)
    timer.daemon = True
    started = time.monotonic()
    timer.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if expired.is_set():
            raise WebhookError(f"no complete answer within {deadline_seconds:g}s")
        if response.status >= 400:
            raise WebhookError(f"HTTP {response.status} {response.reason}")
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or time.monotonic() - started >= deadline_seconds:
            raise WebhookError(f"no complete answer within {deadline_seconds:g}s") from None
        raise WebhookError(f"{type(exc).__name__}: {exc}") from None
    finally:
        timer.cancel()
        connection.close()
