"""The studio's job store: one SQLite database (WAL) in the studio folder with jobs, steps, artefacts, events.

Why SQLite: a job must survive kill -9 at any point and be resumed by a later process, and two processes
must never run one job at once. SQLite gives both without a server: every state change is one committed
transaction (a killed process leaves the last committed state), and the lease is a conditional UPDATE
that only one writer can win. WAL lets ``studio status`` read while a job writes.

The lease: a running job's row names its owner (host:pid) and an expiry it renews while it works
(``Lease.renew`` at every step and progress report). Another process may take the job when the lease
expired, or at once when the owner is a process of this host that no longer exists (kill -9 leaves the
row behind; the pid check makes ``resume`` work immediately instead of after the expiry).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loracam.errors import LoracamError

SCHEMA_VERSION = 1
DB_NAME = "jobs.sqlite"
LEASE_SECONDS = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, folder TEXT NOT NULL, status TEXT NOT NULL,
    config TEXT NOT NULL, inputs TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, owner TEXT, lease_until REAL, message TEXT);
CREATE TABLE IF NOT EXISTS steps (
    job TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL, status TEXT NOT NULL,
    started REAL, finished REAL, detail TEXT, PRIMARY KEY (job, name));
CREATE TABLE IF NOT EXISTS artefacts (
    job TEXT NOT NULL, step TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (job, path));
CREATE TABLE IF NOT EXISTS queue (job TEXT PRIMARY KEY, submitted REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL,
    message TEXT NOT NULL);
"""

# A job's status: what `studio list` shows and what `resume` accepts ("queued": waiting for the worker).
STATUSES = ("new", "queued", "running", "stopped", "failed", "cancelled", "done")


@dataclass(frozen=True)
class JobRow:
    name: str
    kind: str
    folder: Path
    status: str
    config: dict
    inputs: dict
    version: int
    created: float
    updated: float
    owner: str | None
    lease_until: float | None
    message: str | None


@dataclass(frozen=True)
class StepRow:
    name: str
    position: int
    status: str  # pending | running | done | failed
    started: float | None
    finished: float | None
    detail: dict


def me() -> str:
    """This process as a lease owner: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    """False only when the owner is a process of this host that is gone; other hosts are trusted."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


# WAL keeps its index in shared memory (the -shm file, mmap'd): every process must be on one host. A studio
# folder on a network file system (workers on several machines) gets SQLite's rollback journal instead, which
# needs only the file system's locks (NFSv4 has them; README: deployment).
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "fuse.sshfs",
              "fuse.glusterfs", "fuse.cephfs")
JOURNAL_ENV = "LORACAM_STORE_JOURNAL"


def journal_mode(folder: Path, mounts: str = "/proc/mounts") -> str:
    """WAL on a local disk, DELETE on a network file system; $LORACAM_STORE_JOURNAL (wal or delete) decides
    where the mount table cannot be read or guesses wrong."""
    forced = os.environ.get(JOURNAL_ENV, "").strip().upper()
    if forced in ("WAL", "DELETE"):
        return forced
    return "DELETE" if fs_type(folder, mounts) in NETWORK_FS else "WAL"


def fs_type(folder: Path, mounts: str = "/proc/mounts") -> str | None:
    """The file system type of the mount that holds ``folder`` (the longest mount point above it)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    where, best = str(Path(folder).resolve()), (None, "")
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (parts[2], point)
    return best[0]


def dead_owner(job: "JobRow", now: float | None = None) -> bool:
    """A running job whose runner is gone: its lease expired, or it was a process of this host that exited."""
    now = time.time() if now is None else now
    return not job.owner or not job.lease_until or job.lease_until <= now or not _owner_alive(job.owner)


class JobStore:
    """The studio folder's database. Open one per process; every method is one short transaction."""

    def __init__(self, studio: Path):
        self.studio = Path(studio)
        self.studio.mkdir(parents=True, exist_ok=True)
        self.path = self.studio / DB_NAME
        self.db = self._open(deadline=time.monotonic() + 30.0)
        self._check_version()

    def _open(self, deadline: float) -> sqlite3.Connection:
        """Connect, set the journal and make the tables. Processes that open a new store at once (two workers
        started together, the web server and its worker) find it locked while one of them switches it to WAL:
        SQLite answers that at once, without its busy wait, so it is waited for here."""
        while True:
            db = None
            try:
                db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                db.execute(f"PRAGMA journal_mode={journal_mode(self.studio)}")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
                db.executescript(_SCHEMA)
                return db
            except sqlite3.OperationalError as exc:
                if db is not None:
                    db.close()
                if "locked" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise LoracamError(f"{self.path} could not be opened ({exc}); is another program holding it? "
                                   "Try again, or use another --studio folder") from None
            except sqlite3.DatabaseError as exc:
                if db is not None:
                    db.close()
                raise LoracamError(f"{self.path} is not a loracam job store ({exc}); use another --studio folder") from None

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            return
        if int(row[0]) > SCHEMA_VERSION:
            raise LoracamError(
                f"{self.studio} was written by a newer loracam (job store version {row[0]}, this one reads "
                f"{SCHEMA_VERSION}); upgrade loracam (pip install -U loracam) to use it. Nothing was changed.")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")  # take the write lock now: no lost update between read and write
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- jobs ---------------------------------------------------------------------------------------

    def create(self, name: str, kind: str, folder: Path, config: dict, inputs: dict, steps: list[str],
               version: int) -> JobRow:
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM jobs WHERE name=?", (name,)).fetchone():
                raise LoracamError(f"a job named {name!r} already exists in {self.studio}; resume it with "
                                   f"`loracam studio resume {name}` or choose another --name")
            db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,NULL,NULL,NULL)",
                       (name, kind, str(folder), "new", json.dumps(config), json.dumps(inputs), version, now, now))
            db.executemany("INSERT INTO steps VALUES (?,?,?,'pending',NULL,NULL,'{}')",
                           [(name, s, i) for i, s in enumerate(steps)])
        self.event(name, "created", f"{kind} job with steps {', '.join(steps)}")
        return self.job(name)

    def job(self, name: str) -> JobRow:
        row = self.db.execute("SELECT * FROM jobs WHERE name=?", (name,)).fetchone()
        if row is None:
            known = [r[0] for r in self.db.execute("SELECT name FROM jobs ORDER BY created")]
            raise LoracamError(f"no job named {name!r} in {self.studio}"
                               + (f"; its jobs: {', '.join(known)}" if known else "; it has no jobs yet"))
        return _job_row(row)

    def jobs(self) -> list[JobRow]:
        return [_job_row(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY created")]

    def set_status(self, name: str, status: str, message: str | None = None) -> None:
        assert status in STATUSES, status
        with self._tx() as db:
            db.execute("UPDATE jobs SET status=?, message=?, updated=? WHERE name=?",
                       (status, message, time.time(), name))

    def set_inputs(self, name: str, inputs: dict) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET inputs=?, updated=? WHERE name=?", (json.dumps(inputs), time.time(), name))

    # -- the lease ----------------------------------------------------------------------------------

    def acquire(self, name: str, owner: str | None = None, seconds: float = LEASE_SECONDS,
                resume_cancelled: bool = False) -> "Lease":
        """Take the job's lease or raise: another live process runs it (Held), it is done (Finished), or it is
        cancelled and the caller did not ask to resume a cancelled job (Cancelled).

        The status is read in the lease's own transaction: a caller that looked at the job a moment before
        (a worker given a duplicate message: the reapers' resends are duplicates by design) may find it
        finished or cancelled by then, and taking the lease anyway would mark a done job running again or
        undo the user's cancel."""
        owner = owner or me()
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT owner, lease_until, status FROM jobs WHERE name=?", (name,)).fetchone()
            if row is None:
                raise LoracamError(f"no job named {name!r} in {self.studio}")
            held, until, status = row
            if status == "done":
                raise Finished(f"job {name!r} is already done")
            if status == "cancelled" and not resume_cancelled:
                raise Cancelled(f"job {name!r} was cancelled before this process took it; "
                                f"`loracam studio resume {name}` runs it again")
            if held and held != owner and until and until > now and _owner_alive(held):
                raise Held(
                    f"job {name!r} is being run by another process ({held}, lease until "
                    f"{time.strftime('%H:%M:%S', time.localtime(until))}); wait for it, or stop it with "
                    f"`loracam studio cancel {name}`")
            db.execute("UPDATE jobs SET owner=?, lease_until=?, status='running', updated=? WHERE name=?",
                       (owner, now + seconds, now, name))
        return Lease(self, name, owner, seconds)

    def _renew(self, lease: "Lease") -> None:
        now = time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET lease_until=?, updated=? WHERE name=? AND owner=?",
                             (now + lease.seconds, now, lease.job, lease.owner))
            if cur.rowcount != 1:
                raise LoracamError(f"job {lease.job!r} was taken over by another process; this one stops")
            status = db.execute("SELECT status FROM jobs WHERE name=?", (lease.job,)).fetchone()[0]
        if status == "cancelled":
            raise Cancelled(f"job {lease.job!r} was cancelled; it stopped at a step boundary. "
                            f"`loracam studio resume {lease.job}` continues it")

    def _release(self, lease: "Lease", status: str, message: str | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET owner=NULL, lease_until=NULL, status=?, message=?, updated=? "
                       "WHERE name=? AND owner=?", (status, message, time.time(), lease.job, lease.owner))

    def cancel(self, name: str) -> str:
        """Mark a job cancelled: a running one stops at its next lease renewal; returns what happened."""
        job = self.job(name)
        if job.status in ("done", "cancelled"):
            return f"job {name!r} is already {job.status}"
        self.set_status(name, "cancelled", "cancelled by the user")
        self.event(name, "cancelled", "cancelled by the user")
        running = not dead_owner(job)
        return (f"job {name!r} cancelled; its process ({job.owner}) stops at its next step boundary" if running
                else f"job {name!r} cancelled")

    # -- the queue (what the worker runs: loracam/studio/worker.py) ---------------------------------

    def enqueue(self, name: str) -> None:
        """Put a job in the worker's queue (a new one, or a stopped or cancelled one to resume)."""
        job = self.job(name)
        if job.status == "done":
            raise LoracamError(f"job {name!r} is already done; nothing to run")
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO queue VALUES (?, ?)", (name, time.time()))
            if job.status != "running":
                db.execute("UPDATE jobs SET status='queued', message=NULL, updated=? WHERE name=?", (time.time(), name))
        self.event(name, "queued", "waiting for the worker")

    def dequeue(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM queue WHERE job=?", (name,))

    def queued(self) -> list[str]:
        """The queue in order: jobs submitted and not yet finished, cancelled or stopped by an error."""
        return [r[0] for r in self.db.execute("SELECT job FROM queue ORDER BY submitted")]

    def queued_since(self) -> dict[str, float]:
        """When each queued job was (last) put in the queue."""
        return dict(self.db.execute("SELECT job, submitted FROM queue"))

    def next_queued(self) -> str | None:
        """The first queued job no live process runs (a killed worker's job comes first: it was submitted
        earlier); cancelled or done ones leave the queue here."""
        now = time.time()
        for name in self.queued():
            job = self.job(name)
            if job.status in ("done", "cancelled"):
                self.dequeue(name)
                continue
            if job.status == "running" and not dead_owner(job, now) and job.owner != me():
                continue
            return name
        return None

    # -- steps, artefacts, events -------------------------------------------------------------------

    def steps(self, name: str) -> list[StepRow]:
        rows = self.db.execute("SELECT name, position, status, started, finished, detail FROM steps "
                               "WHERE job=? ORDER BY position", (name,))
        return [StepRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5] or "{}")) for r in rows]

    def step_status(self, name: str, step: str, status: str, detail: dict | None = None) -> None:
        now = time.time()
        column = "started" if status == "running" else "finished"
        with self._tx() as db:
            db.execute(f"UPDATE steps SET status=?, {column}=?, detail=? WHERE job=? AND name=?",
                       (status, now, json.dumps(detail or {}), name, step))

    def artefacts_add(self, name: str, step: str, files: list[tuple[Path, str]]) -> None:
        """Record what a step wrote: (path below the job folder, kind) pairs, in one transaction."""
        now = time.time()
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO artefacts VALUES (?,?,?,?,?)",
                           [(name, step, str(p), kind, now) for p, kind in files])

    def artefacts(self, name: str, step: str | None = None) -> list[tuple[str, str, str]]:
        q = "SELECT step, path, kind FROM artefacts WHERE job=?" + (" AND step=?" if step else "") + " ORDER BY created"
        return list(self.db.execute(q, (name, step) if step else (name,)))

    def event(self, name: str, kind: str, message: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO events (job, time, kind, message) VALUES (?,?,?,?)", (name, time.time(), kind, message))

    def last_event(self, name: str, kind: str) -> str | None:
        """The newest message of one kind of event (e.g. "worker": who runs or ran the job), or None."""
        row = self.db.execute("SELECT message FROM events WHERE job=? AND kind=? ORDER BY id DESC LIMIT 1",
                              (name, kind)).fetchone()
        return row[0] if row else None

    def events(self, name: str, last: int | None = None) -> list[tuple[float, str, str]]:
        rows = list(self.db.execute("SELECT time, kind, message FROM events WHERE job=? ORDER BY id", (name,)))
        return rows[-last:] if last else rows


class Held(LoracamError):
    """Another live process holds the job's lease: it runs the job (a worker skips it)."""


class Finished(LoracamError):
    """The job was done by the time its lease was asked for (another worker finished it meanwhile)."""


class Cancelled(LoracamError):
    """The user cancelled the job while it ran."""

    exit_code = 3


@dataclass
class Lease:
    store: JobStore
    job: str
    owner: str
    seconds: float

    def renew(self) -> None:
        self.store._renew(self)

    def release(self, status: str, message: str | None = None) -> None:
        self.store._release(self, status, message)


def _job_row(r: tuple) -> JobRow:
    return JobRow(r[0], r[1], Path(r[2]), r[3], json.loads(r[4]), json.loads(r[5]), r[6], r[7], r[8], r[9], r[10],
                  r[11])
