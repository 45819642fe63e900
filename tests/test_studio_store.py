"""The studio's job store: steps, events, the lease (live owners kept out, dead ones taken over), versions."""

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from loracam.errors import LoracamError
from loracam.studio.store import SCHEMA_VERSION, Cancelled, JobStore


def _job(store, name="a"):
    return store.create(name, "portrait", store.studio / name, {"name": name}, {"base": {}}, ["prep", "train"], 1)


def test_create_records_steps_and_events(tmp_path):
    store = JobStore(tmp_path)
    job = _job(store)
    assert job.status == "new" and [s.name for s in store.steps("a")] == ["prep", "train"]
    assert all(s.status == "pending" for s in store.steps("a"))
    store.step_status("a", "prep", "done", {"kept": 3})
    assert store.steps("a")[0].detail == {"kept": 3} and store.steps("a")[0].status == "done"
    assert [k for _, k, _ in store.events("a")] == ["created"]
    with pytest.raises(LoracamError, match="already exists"):
        _job(store)
    with pytest.raises(LoracamError, match="no job named 'b'.*its jobs: a"):
        store.job("b")
    # WAL: a reader in another connection sees committed state while nothing is held open
    assert sqlite3.connect(tmp_path / "jobs.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_live_owner_keeps_the_lease(tmp_path):
    store = JobStore(tmp_path)
    _job(store)
    other = f"{socket.gethostname()}:{os.getppid()}"  # a live process of this host that is not us
    store.acquire("a", owner=other)
    with pytest.raises(LoracamError, match="being run by another process"):
        JobStore(tmp_path).acquire("a")


def test_a_dead_owner_is_taken_over_at_once(tmp_path):
    store = JobStore(tmp_path)
    _job(store)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid now names no process: as after kill -9
    store.acquire("a", owner=f"{socket.gethostname()}:{proc.pid}", seconds=3600)
    lease = JobStore(tmp_path).acquire("a")
    assert store.job("a").owner == lease.owner and store.job("a").status == "running"


def test_cancel_stops_a_running_job_at_its_next_renewal(tmp_path):
    store = JobStore(tmp_path)
    _job(store)
    lease = store.acquire("a")
    lease.renew()
    assert "cancelled" in JobStore(tmp_path).cancel("a")
    with pytest.raises(Cancelled, match="resume a"):
        lease.renew()


def test_a_store_from_a_newer_loracam_is_refused_and_left_alone(tmp_path):
    JobStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    before = (tmp_path / "jobs.sqlite").read_bytes()
    with pytest.raises(LoracamError, match="newer loracam.*upgrade"):
        JobStore(tmp_path)
    assert (tmp_path / "jobs.sqlite").read_bytes() == before


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "jobs.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(LoracamError, match="not a loracam job store"):
        JobStore(tmp_path)


def test_a_studio_on_a_network_file_system_gets_the_rollback_journal(tmp_path, monkeypatch):
    """WAL's shared-memory index works only with every process on one host: workers on several machines share
    the studio over NFS, where the store must use the rollback journal."""
    from loracam.studio.store import JOURNAL_ENV, fs_type, journal_mode

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      "server:/export /mnt/studio nfs4 rw,vers=4.2 0 0\n"
                      "/dev/sdb1 /mnt/studio/local\\040disk xfs rw 0 0\n")
    monkeypatch.delenv(JOURNAL_ENV, raising=False)
    assert fs_type(Path("/mnt/studio/jobs"), str(mounts)) == "nfs4"
    assert journal_mode(Path("/mnt/studio/jobs"), str(mounts)) == "DELETE"
    assert journal_mode(Path("/mnt/studio/local disk/x"), str(mounts)) == "WAL"  # the longest mount point wins
    assert journal_mode(Path("/mnt/studiox"), str(mounts)) == "WAL"  # a prefix of a name is not a parent
    monkeypatch.setenv(JOURNAL_ENV, "delete")
    assert journal_mode(Path("/home/me"), str(mounts)) == "DELETE"
    store = JobStore(tmp_path / "studio")  # and the store opens in it
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_new_store_opened_at_once_by_several_processes_opens_in_each(tmp_path):
    """Two workers started together both open a new store; while one switches it to WAL, SQLite tells the other
    "locked" at once (a lock upgrade it does not wait for). Opening tries again; it used to call the folder "not a
    loracam job store" (CI, two workers on a fresh studio; before the fix 6 of 60 such opens, in 15 rounds, failed)."""
    import time

    code = ("import sys, time; from loracam.studio.store import JobStore; t = float(sys.argv[2])\n"
            "while time.time() < t: pass\n"  # all start together
            "try:\n    JobStore(sys.argv[1]).close(); print('ok')\nexcept Exception as e: print('ERR', e)")
    for i in range(8):  # a fresh folder each round: the race is in making the store
        start = time.time() + 0.4
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"s{i}"), str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert outs == ["ok"] * 4, outs
