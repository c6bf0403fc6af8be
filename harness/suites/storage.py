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


def masked(url: str) -> str:
    """`url` with its password shown as *** (SQLAlchemy's own rendering), for every message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL SQLAlchemy reads: mask user:password@ by hand
        return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def _scrub(text: str, url: str) -> str:
    """A driver's message with the URL's password taken out, should the driver have echoed it."""
    with contextlib.suppress(sqlalchemy.exc.ArgumentError):
        password = make_url(url).password
        if password:
            text = text.replace(str(password), "***")
    return text


def storage_url(url: str) -> str:
    """Check the scheme and the driver; return the URL with an explicit driver where we chose it."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        raise ValueError(f"--storage {masked(url)!r} is not a storage URL; use {SCHEMES}") from err
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
