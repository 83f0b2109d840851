"""Weekly pre-funding review of a seller's loan files, orchestrated by Dagster.

`loan_engine_dagster.rules` is the Dagster-free business core. The Dagster
definitions are loaded lazily so that `dagster ... -m loan_engine_dagster`
finds them while the rules and the CLI stay importable without Dagster.
"""

__all__ = ["defs"]


def __getattr__(name: str):
    if name == "defs":
        from loan_engine_dagster.definitions import defs

        return defs
    raise AttributeError(f"module 'loan_engine_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + ["defs"])
