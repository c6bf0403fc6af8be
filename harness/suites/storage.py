"""Optuna storages from a URL: the coordinator that sweeps and multi-worker suites share.

    sqlite:///path/study.db          one machine (the default, in the output folder)
    postgresql://user:pw@host/db     many machines (extra `moe-harness[postgres]`: psycopg 3)
    mysql://user:pw@host/db          many machines (extra `moe-harness[mysql]`: PyMySQL)
    journal:/shared/path.log         a journal file on a shared filesystem (no dead-worker detection)

A URL may come from `--storage` or from the environment variable MOE_HARNESS_STORAGE, and a
PostgreSQL password from PGPASSWORD or ~/.pgpass (libpq reads both), so that none need be on a
command line. A password in a URL is never printed: messages show it as `***`.

RDB storages get Optuna's heartbeat: a worker that dies (SIGKILL, a lost node) stops beating,
and after the grace period the next worker to look marks its trial failed and enqueues it
again (RetryFailedTrialCallback). Opening is retried, because Optuna creates its schema
without a lock and workers that start at the same moment on an empty database collide.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import random
import re
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

# NOTE: the drivers we install for the plain schemes; SQLAlchemy's own default differs by version
DRIVERS = {"postgresql": ("psycopg", "postgres", "psycopg"), "mysql": ("pymysql", "mysql", "pymysql")}
SCHEMES = "sqlite:///PATH, postgresql://USER@HOST/DB, mysql://USER@HOST/DB or journal:PATH"
HEARTBEAT_S = 30  # default heartbeat interval; the grace period is 3 beats
MAX_RETRY = 3  # times a dead worker's trial is enqueued again
# NOTE: renamed in Optuna 4.9; the old name still works down to the 3.4 we support
RETRY = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", optuna.storages.RetryFailedTrialCallback)
CALLBACK_ARG = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                else "failed_trial_callback")


ENV = "MOE_HARNESS_STORAGE"  # the storage URL, where no --storage is given (and how local workers get it)


def _userinfo_span(url: str) -> tuple[int, int] | None:
    """Where the password of `url` lies (start, end), by hand and on the raw text: from the first ':'
    after the scheme's '//' to the last '@' (a password may hold an unencoded '@', '/' or ':', which
    no URL parser then reads as the writer meant). None when there is no 'user:password@'."""
    start = url.find("://") + 3 if "://" in url else 0
    at = url.rfind("@", start)
    colon = url.find(":", start, at) if at > 0 else -1
    return (colon + 1, at) if colon >= 0 else None


def masked(url: str) -> str:
    """`url` with everything between the user name and the last '@' shown as ***, for every
    message, whether or not the URL parses."""
    span = _userinfo_span(url)
    return url if span is None else url[:span[0]] + "***" + url[span[1]:]


def _scrub(text: str, url: str) -> str:
    """A driver's message with every piece of the URL's password taken out, should the driver have
    echoed it (also the pieces a parser split off as part of the host)."""
    span = _userinfo_span(url)
    if span is None:
        return text
    password = url[span[0]:span[1]]
    for piece in sorted({password, *password.split("@"), *password.split("/"), *password.split(":")}, key=len,
                        reverse=True):
        if len(piece) >= 3:  # NOTE: shorter pieces would mask ordinary words of the message
            text = text.replace(piece, "***")
    return text


def storage_url(url: str) -> str:
    """Check the scheme and the driver; return the URL with an explicit driver where we chose it."""
    span = _userinfo_span(url)
    if span is not None and any(c in url[span[0]:span[1]] for c in "@/"):
        raise ValueError(f"--storage {masked(url)!r}: its password holds an unencoded '@' or '/', so the host would "
                         "be read from the password; percent-encode them (@ as %40, / as %2F), or keep the password "
                         "in PGPASSWORD or ~/.pgpass")
    try:
        parsed = make_url(url)
        port = parsed.port
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        what = ("its port is not a whole number (use HOST:PORT, e.g. 127.0.0.1:5432)"
                if isinstance(err, ValueError) and "int()" in str(err) else "is not a storage URL")
        raise ValueError(f"--storage {masked(url)!r} {what}; use {SCHEMES}") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"--storage {masked(url)!r}: port {port} must be between 1 and 65535")
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if not parsed.database:
            raise ValueError(f"--storage {masked(url)!r} names no database file; use sqlite:///path/to/study.db")
        parent = Path(parsed.database).expanduser().resolve().parent
        if not parent.is_dir():
            raise ValueError(f"--storage {masked(url)!r}: the folder {parent} does not exist")
        return url
    if backend not in DRIVERS:
        raise ValueError(f"--storage {masked(url)!r} has an unsupported scheme {backend!r}; use {SCHEMES}")
    module, extra, default_driver = DRIVERS[backend]
    driver = driver or default_driver
    if driver == default_driver and importlib.util.find_spec(module) is None:
        raise ValueError(f"--storage {masked(url)!r} needs the {module} driver: pip install 'moe-harness[{extra}]'")
    try:
        parsed.get_dialect().import_dbapi()  # NOTE: postgresql+psycopg2 without psycopg2 fails here, not later
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise ValueError(f"--storage {masked(url)!r} names the driver {driver!r}, which is not installed or not known "
                         f"({type(err).__name__}: {_scrub(str(err), url)}); install it, or write {backend}:// for the "
                         f"{default_driver} driver (pip install 'moe-harness[{extra}]')") from None
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def open_storage(url: str | None, default: Path, heartbeat_s: int | None = HEARTBEAT_S):
    """The storage at `url` (SQLite file `default` when None); ValueError naming the URL if it fails."""
    url = url or f"sqlite:///{Path(default).resolve()}"
    if url.startswith("journal:"):
        return _journal(url)
    full = storage_url(url)
    kwargs = {"connect_args": {"timeout": 60}} if full.startswith("sqlite") else {"pool_pre_ping": True}
    if heartbeat_s is not None and (not isinstance(heartbeat_s, int) or heartbeat_s < 1):
        raise ValueError(f"--heartbeat = {heartbeat_s!r} must be a whole number of seconds >= 1")
    for attempt in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                beat = {}
                if heartbeat_s:
                    beat = {"heartbeat_interval": heartbeat_s, "grace_period": 3 * heartbeat_s,
                            CALLBACK_ARG: RETRY(max_retry=MAX_RETRY)}
                return optuna.storages.RDBStorage(full, engine_kwargs=kwargs, **beat)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
            if _unreachable(err) or attempt == 7:
                raise ValueError(f"--storage {masked(url)!r} could not be opened: {_scrub(_first_line(err), url)}") from err
            time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))  # another worker is creating the schema
    raise AssertionError("unreachable")


def close_storage(storage) -> None:
    """Give a relational storage's pooled connections back to the server now, not at garbage
    collection: a process that opens many storages (tests, notebooks) would otherwise hold one
    pool per storage and exhaust PostgreSQL's max_connections."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        storage.remove_session()
        engine.dispose()


def _journal(url: str):
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len("journal:"):]).expanduser()
    if not path.parent.is_dir():
        raise ValueError(f"--storage {masked(url)!r}: the folder {path.parent} does not exist")
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _unreachable(err: Exception) -> bool:
    text = str(err).lower()
    return any(s in text for s in ("connection refused", "could not translate host", "password authentication",
                                   "does not exist", "unable to open database", "no such host", "timeout expired"))


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def heartbeat_enabled(storage) -> bool:
    """Whether `storage` (or the cache Optuna wraps around it inside a study) beats a heartbeat."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None
