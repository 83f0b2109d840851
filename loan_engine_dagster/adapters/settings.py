"""Machine-specific settings: an explicit value, else the environment
variable, else the local default. Read when used, never at import."""

from __future__ import annotations

import os

DEFAULTS = {
    "LOAN_ENGINE_INBOX": "data/inbox",
    "LOAN_ENGINE_OUTPUT_DIR": "data/outputs",
    "LOAN_ENGINE_DATABASE_URL": "sqlite:///data/results.db",
    "LOAN_ENGINE_UI_URL": "http://127.0.0.1:3000",
}


def setting(value: str | None, variable: str) -> str | None:
    """None only for settings without a default (rules file, webhook)."""
    return value or os.environ.get(variable) or DEFAULTS.get(variable)
