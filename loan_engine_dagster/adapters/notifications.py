"""Posting alerts to the team's webhook (chat or paging), if one is set."""

from __future__ import annotations

import http.client
import json
import socket
import threading
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
    connection = connection_class(parts.hostname, parts.port, timeout=deadline_seconds)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    outcome: dict = {}

    def attempt() -> None:
        try:
            connection.request("POST", path, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            outcome["status"] = (response.status, response.reason)
        except Exception as exc:
            outcome["error"] = exc

    # A socket timeout bounds each wait, not their sum: a server that trickles
    # one byte every few seconds never trips it, and name resolution ignores it.
    # The call runs aside and is abandoned at the deadline; shutting its socket
    # wakes whatever read it is blocked in, so it ends soon after.
    worker = threading.Thread(target=attempt, name="webhook-post", daemon=True)
    worker.start()
    worker.join(deadline_seconds)
    try:
        if worker.is_alive():
            raise WebhookError(f"no complete answer within {deadline_seconds:g}s")
        if "error" in outcome:
            exc = outcome["error"]
            raise WebhookError(f"{type(exc).__name__}: {exc}")
        status, reason = outcome["status"]
        if status >= 400:
            raise WebhookError(f"HTTP {status} {reason}")
    finally:
        sock = connection.sock
        if sock is not None and worker.is_alive():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        connection.close()
