"""Checks made before a batch reads anything: can its results be delivered?
A database that is down or an output folder that cannot be written would
otherwise fail the run only after the whole batch was computed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

# Long enough for a database on another host, short enough that a run (or an
# incident report) does not wait on one that does not answer.
CONNECT_TIMEOUT_SECONDS = 5


class PreflightError(Exception):
    """Where the batch's results would go cannot be used. The machine's or the
    deployment's problem, never the seller's files: kind `infra`."""

    kind = "infra"


def quick_engine(url: str) -> Engine:
    """An engine whose connections and statements give up after a few seconds."""
    backend = make_url(url).get_backend_name()
    limit_ms = CONNECT_TIMEOUT_SECONDS * 1000  # also for a statement stuck behind a lock
    connect_args = {"postgresql": {"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                                   "options": f"-c statement_timeout={limit_ms} -c lock_timeout={limit_ms}"},
                    "sqlite": {"timeout": CONNECT_TIMEOUT_SECONDS}}.get(backend, {})
    return create_engine(url, connect_args=connect_args)


def shown_url(url: str) -> str:
    """A database URL as it may be shown anywhere: any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<not a SQLAlchemy URL>"


def locked(url: str) -> PreflightError:
    """For a SQLite results database that stayed locked past the busy timeout
    (a minute): another run's save holds it for seconds, so this is a
    program that left a transaction open on the file."""
    return PreflightError(
        f"results database {shown_url(url)} is locked by another program: a transaction left open on it (a database "
        "browser with unsaved changes, a sqlite3 shell inside BEGIN) holds every run back; close it or end its "
        "transaction, then re-run"
    )


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for any other database, an
    in-memory one, or no URL at all."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_sqlite_folder(url: str) -> None:
    """Raise `PreflightError` when a SQLite database's folder does not exist:
    SQLite says only "unable to open database file", which read as a
    database to wait for (three retries, 30 s) rather than a path to fix."""
    file = sqlite_file(url)
    try:
        if file is None or file.parent.is_dir():
            return
    except OSError:
        return  # a folder that cannot be looked at: the connection says why
    folder = file.parent
    raise PreflightError(f"results database {shown_url(url)} cannot be opened: its folder {folder} does not exist "
                         "(create it, or mount the share it is on)")


def check_database(url: str) -> None:
    """Raise `PreflightError` naming the database (password hidden) when it cannot be reached."""
    check_sqlite_folder(url)
    try:
        engine = quick_engine(url)
    except Exception as exc:
        raise PreflightError(f"results database URL {shown_url(url)} is not usable ({type(exc).__name__})") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip()  # the driver's words, without SQLAlchemy's wrapping
        reason = reason.splitlines()[0] if reason else type(exc).__name__
        raise PreflightError(f"results database {shown_url(url)} cannot be reached ({type(exc).__name__}: {reason})") from None
    finally:
        engine.dispose()


def unreachable_output(root: Path, exc: OSError) -> str:
    return (f"output folder {os.path.abspath(root)} cannot be reached ({exc.strerror or exc}); if it is a network "
            "share, check that it is mounted and that its server answers")


def check_output_root(root: Path) -> None:
    """Raise `PreflightError` naming the folder when reports could not be
    written under it. Leaves no trace: folders it had to create go again."""
    for attempt in range(3):  # another run's check may remove a folder this one just made
        try:
            if root.exists() and not root.is_dir():  # mkdir would only say "File exists"
                raise PreflightError(f"output folder {root.resolve()} is a file, not a folder")
            created = [p for p in (root, *root.parents) if not p.exists()]
        except OSError as exc:  # neither there nor not there: a share whose server is gone (ENOTCONN, ESTALE, EIO)
            raise PreflightError(unreachable_output(root, exc)) from None
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".loan-engine-write-check-"):
                return
        except FileNotFoundError:
            if attempt == 2:
                raise PreflightError(f"output folder {root.resolve()} keeps disappearing") from None
        except OSError as exc:
            raise PreflightError(f"output folder {root.resolve()} is not writable ({exc.strerror or exc})") from None
        finally:
            for folder in created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break
