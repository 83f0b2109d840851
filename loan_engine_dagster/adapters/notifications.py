"""Posting alerts to the team's webhook (chat or paging), if one is set."""

from __future__ import annotations

import json
import urllib.request

WEBHOOK_TIMEOUT_SECONDS = 10


def post_webhook(url: str, payload: dict) -> None:
    """POST a JSON payload with a `text` field most chat webhooks show as is.
    Raises on any network or HTTP error; callers decide whether that matters."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
        response.read()
