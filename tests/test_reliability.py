"""Hard to break: concurrent writers, crashes, bad database files, a full disk."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

import engines
from conftest import ROOT, LiveServer, need


def integrity(db_file: Path) -> str:
    with sqlite3.connect(db_file) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def rows(db_file: Path) -> dict[int, tuple[str, int]]:
    connection = sqlite3.connect(db_file)
    try:
        return {i: (t, th) for i, t, th in connection.execute("SELECT id, title, thrust FROM engine")}
    finally:
        connection.close()


# -- SQLite set up for a desktop app -----------------------------------------------

def test_sqlite_runs_in_wal_with_full_sync_busy_timeout_and_foreign_keys(app):
    with app.app_context(), engines.db.engine.connect() as connection:
        pragma = lambda name: connection.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
        assert pragma("busy_timeout") == engines.BUSY_TIMEOUT_MS
        assert pragma("foreign_keys") == 1


def test_a_write_request_begins_immediate_so_writers_queue_instead_of_failing(app):
    """Two transactions that read then write: with plain BEGIN the second
    fails at once with "database is locked"; BEGIN IMMEDIATE makes it wait."""
    db_file = Path(app.instance_path) / "engines.sqlite3"
    with app.app_context():
        engines.db.session.add(engines.Engine(title="Main", thrust=1))
        engines.db.session.commit()
    holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE engine SET title = 'Main (renamed by another program)'")
    release = threading.Timer(0.5, holder.execute, args=("COMMIT",))
    release.start()
    try:
        response = app.test_client().patch("/api/engines/1", json={"thrust": 2})
    finally:
        release.join()
        holder.close()
    assert response.status_code == 200
    assert rows(db_file)[1] == ("Main (renamed by another program)", 2)


# -- load: 8 threads x 250 requests, and a second process writing ---------------------

def run_worker(url: str, worker: int, requests_count: int, results: dict) -> None:
    """Mixed creates, thrust changes and reads; every engine is touched only
    by the worker that made it, so the final state is exactly predictable."""
    http = requests.Session()
    mine: dict[int, tuple[str, int]] = {}
    statuses = []
    rng = random.Random(worker)
    for i in range(requests_count):
        kind = i % 5
        if kind == 0 or not mine:
            title, thrust = f"w{worker}-{i}", rng.randrange(1_000_000)
            response = http.post(f"{url}/api/engines", json={"title": title, "thrust": thrust}, timeout=60)
            if response.status_code == 201:
                mine[response.json()["id"]] = (title, thrust)
        elif kind in (1, 2):
            engine_id = rng.choice(list(mine))
            thrust = rng.randrange(1_000_000)
            response = http.patch(f"{url}/api/engines/{engine_id}", json={"thrust": thrust}, timeout=60)
            if response.status_code == 200:
                mine[engine_id] = (mine[engine_id][0], thrust)
        elif kind == 3:  # a read, on whichever connection, finds the worker's last write
            engine_id = rng.choice(list(mine))
            response = http.get(f"{url}/api/engines/{engine_id}", timeout=60)
            if response.status_code == 200:
                assert (response.json()["title"], response.json()["thrust"]) == mine[engine_id]
        else:
            response = http.get(f"{url}/api/engines?sort=-thrust&per_page=20", timeout=60)
        statuses.append(response.status_code)
    results[worker] = (mine, statuses)


def test_eight_threads_and_a_second_process_write_without_a_single_error(tmp_path):
    instance = tmp_path / "instance"
    first = LiveServer(instance)
    second = LiveServer(instance)  # a second window on the same database: another process
    try:
        results: dict = {}
        with ThreadPoolExecutor(max_workers=10) as pool:
            futures = [pool.submit(run_worker, first.url, w, 250, results) for w in range(8)]
            futures += [pool.submit(run_worker, second.url, w, 250, results) for w in (8, 9)]
            for future in futures:
                future.result()
        statuses = [s for _, worker_statuses in results.values() for s in worker_statuses]
        assert len(statuses) == 2500
        assert sorted(set(statuses)) == [200, 201]
        expected = {i: v for mine, _ in results.values() for i, v in mine.items()}
        assert rows(instance / "engines.sqlite3") == expected
        body = requests.get(f"{first.url}/api/engines?per_page=1", timeout=10).json()
        assert body["total"] == len(expected) == 10 * 50
        assert sum(t for _, t in rows(instance / "engines.sqlite3").values()) == sum(t for _, t in expected.values())
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
    assert integrity(instance / "engines.sqlite3") == "ok"


# -- crashes ---------------------------------------------------------------------------

def write_until_killed(url: str, cycle: int, acknowledged: dict, in_flight: dict) -> None:
    """Create then patch engines until the server dies; record each write
    that got a 2xx, and the one request whose answer never came."""
    http = requests.Session()
    for i in range(100_000):
        title = f"crash-{cycle}-{i}"
        try:
            in_flight.update(kind="create", title=title)
            response = http.post(f"{url}/api/engines", json={"title": title, "thrust": i}, timeout=10)
            assert response.status_code == 201, response.text
            engine_id = response.json()["id"]
            acknowledged[engine_id] = (title, i)
            in_flight.update(kind="patch", id=engine_id, thrust=i + 1)
            response = http.patch(f"{url}/api/engines/{engine_id}", json={"thrust": i + 1}, timeout=10)
            assert response.status_code == 200, response.text
            acknowledged[engine_id] = (title, i + 1)
            in_flight.clear()
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            return  # killed before the answer, or in the middle of it: not acknowledged


def test_every_acknowledged_write_survives_kill_9(tmp_path):
    instance = tmp_path / "instance"
    db_file = instance / "engines.sqlite3"
    acknowledged: dict[int, tuple[str, int]] = {}
    rng = random.Random(9)
    for cycle in range(6):
        server = LiveServer(instance)
        in_flight: dict = {}
        writer = threading.Thread(target=write_until_killed, args=(server.url, cycle, acknowledged, in_flight))
        writer.start()
        time.sleep(rng.uniform(0.4, 1.5))
        server.stop(signal.SIGKILL)
        writer.join(30)
        assert not writer.is_alive()

        on_disk = rows(db_file)
        assert integrity(db_file) == "ok"
        # The request in flight when the server died may or may not have landed, but whole.
        if in_flight.get("kind") == "patch":
            title, thrust = acknowledged[in_flight["id"]]
            assert on_disk[in_flight["id"]] in ((title, thrust), (title, in_flight["thrust"]))
            acknowledged[in_flight["id"]] = on_disk[in_flight["id"]]
        unacknowledged = {i: row for i, row in on_disk.items() if i not in acknowledged}
        if in_flight.get("kind") == "create":
            assert list(unacknowledged.values()) in ([], [(in_flight["title"], int(in_flight["title"].split("-")[2]))])
            acknowledged.update(unacknowledged)
        else:
            assert unacknowledged == {}
        # Every write that got a 2xx is there, exactly.
        assert on_disk == acknowledged
    assert len(acknowledged) > 20


def change_until_killed(url: str, cycle: int, acknowledged: list, in_flight: list) -> None:
    """Create, change, delete, restore and revert engines until the server
    dies; record each change that got a 2xx as the history record it must
    have written (engine, version, change, title, thrust), and the one whose
    answer never came."""
    http = requests.Session()
    api = f"{url}/api"
    for i in range(100_000):
        title = f"history-{cycle}-{i}"
        steps = [("POST", f"{api}/engines", {"title": title, "thrust": i}, "create", i),
                 ("PATCH", None, {"thrust": i + 1}, "update", i + 1)]
        if i % 2:
            steps += [("DELETE", None, None, "delete", i + 1), ("POST", "restore", None, "restore", i + 1),
                      ("POST", "revert", {"version": 1}, "revert", i)]
        engine_id, version = None, 0
        for method, where, body, change, thrust in steps:
            target = {None: f"{api}/engines/{engine_id}", "restore": f"{api}/deleted/{engine_id}/restore",
                      "revert": f"{api}/engines/{engine_id}/revert"}.get(where, where)
            in_flight[:] = [(engine_id, version + 1, change, title, thrust)]
            try:
                response = http.request(method, target, json=body, timeout=10)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                return  # killed before the answer, or in the middle of it: not acknowledged
            assert response.status_code in (200, 201, 204), response.text
            engine_id, version = engine_id or response.json()["id"], version + 1
            acknowledged.append((engine_id, version, change, title, thrust))
            in_flight.clear()


def test_after_kill_9_history_holds_exactly_the_changes_that_committed(tmp_path):
    instance = tmp_path / "instance"
    db_file = instance / "engines.sqlite3"
    acknowledged: list[tuple] = []
    rng = random.Random(10)
    for cycle in range(4):
        server = LiveServer(instance)
        in_flight: list = []
        writer = threading.Thread(target=change_until_killed, args=(server.url, cycle, acknowledged, in_flight))
        writer.start()
        time.sleep(rng.uniform(0.4, 1.5))
        server.stop(signal.SIGKILL)
        writer.join(30)
        assert not writer.is_alive()
        assert integrity(db_file) == "ok"
        with closing(sqlite3.connect(db_file)) as connection:
            records = connection.execute("SELECT engine_id, version, change, title, thrust FROM engine_history"
                                         " ORDER BY id").fetchall()
            state = {engine_id: (version, title, thrust) for engine_id, version, title, thrust
                     in connection.execute("SELECT id, version, title, thrust FROM engine")}
        # The change in flight when the server died is recorded if and only if it
        # committed; no other change is recorded but the acknowledged ones.
        if records != acknowledged:
            [(engine_id, version, change, title, thrust)] = in_flight
            landed = records[-1]
            assert records[:-1] == acknowledged and landed[1:] == (version, change, title, thrust)
            assert engine_id in (None, landed[0])
            acknowledged.append(landed)
        assert records == acknowledged
        # Every engine is what its newest record says; every engine not there was deleted by a recorded delete.
        newest = {engine_id: (version, change, title, thrust) for engine_id, version, change, title, thrust in records}
        assert {i: (v, t, th) for i, (v, change, t, th) in newest.items() if change != "delete"} == state
    assert len(acknowledged) > 40 and {change for _, _, change, _, _ in acknowledged} == \
        {"create", "update", "delete", "restore", "revert"}

# -- bad database files ------------------------------------------------------------------

def as_other_user() -> list[str]:
    """Root reads any file: run the app as `nobody` to meet a permission error."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.fixture
def shared_tmp():
    """A temp folder that the `nobody` user can reach too."""
    folder = Path(tempfile.mkdtemp(prefix="engines-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["chmod", "-R", "u+rwX", str(folder)], check=False)
    shutil.rmtree(folder)


def start_engines(instance: Path, prefix: list[str] | None = None):
    return subprocess.run([*(prefix or []), sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
                           "--instance", str(instance)], capture_output=True, text=True, timeout=30)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_database(instance: Path, count: int = 50) -> Path:
    app = engines.create_app(instance_path=instance)
    with app.app_context():
        engines.db.session.execute(engines.Engine.__table__.insert(),
                                   [{"title": f"Engine {i}", "thrust": i} for i in range(count)])
        engines.db.session.commit()
        engines.db.engine.dispose()
    return instance / "engines.sqlite3"


def assert_refused_and_untouched(result, db_file: Path, before: str, words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(db_file) in result.stderr
    assert words in result.stderr
    assert digest(db_file) == before


def test_a_file_that_is_not_sqlite_is_refused_and_kept(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    db_file = instance / "engines.sqlite3"
    db_file.write_text("These are my notes, not a database.\n" * 100)
    before = digest(db_file)
    assert_refused_and_untouched(start_engines(instance), db_file, before, "not a database")


def test_a_corrupt_database_is_refused_and_kept(tmp_path):
    instance = tmp_path / "instance"
    db_file = make_database(instance, count=2000)
    data = bytearray(db_file.read_bytes())
    data[4096:4 * 4096] = os.urandom(3 * 4096)  # scribble over pages 2 to 4
    db_file.write_bytes(bytes(data))
    before = digest(db_file)
    result = start_engines(instance)
    assert_refused_and_untouched(result, db_file, before, "database")
    assert "damaged" in result.stderr or "malformed" in result.stderr


def test_an_unreadable_database_is_refused_and_kept(shared_tmp):
    need(os.geteuid() != 0 or shutil.which("setpriv") is not None, "setpriv (util-linux) to drop root")
    instance = shared_tmp / "instance"
    db_file = make_database(instance)
    instance.chmod(0o777)
    (instance / "secret_key").chmod(0o644)
    db_file.chmod(0o000)
    before = digest(db_file)
    assert_refused_and_untouched(start_engines(instance, as_other_user()), db_file, before, "unable to open")


def test_a_read_only_database_file_is_refused_and_kept(shared_tmp):
    need(os.geteuid() != 0 or shutil.which("setpriv") is not None, "setpriv (util-linux) to drop root")
    instance = shared_tmp / "instance"
    db_file = make_database(instance)
    instance.chmod(0o777)
    (instance / "secret_key").chmod(0o644)
    db_file.chmod(0o444)
    before = digest(db_file)
    result = start_engines(instance, as_other_user())
    assert_refused_and_untouched(result, db_file, before, "is read-only, and Engines writes every change into it")
    assert sorted(path.name for path in instance.iterdir()) == ["engines.log", "engines.sqlite3", "secret_key"], \
        "no -wal or -shm was made beside it"


def test_a_database_in_a_read_only_folder_is_refused_and_kept(shared_tmp):
    need(os.geteuid() != 0 or shutil.which("setpriv") is not None, "setpriv (util-linux) to drop root")
    instance = shared_tmp / "instance"
    db_file = make_database(instance)
    (instance / "secret_key").chmod(0o644)
    db_file.chmod(0o644)
    instance.chmod(0o555)
    before = digest(db_file)
    result = start_engines(instance, as_other_user())
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(instance) in result.stderr
    assert digest(db_file) == before


def test_a_read_or_write_the_database_refuses_is_a_503_naming_why_and_the_server_stays_up(live_server):
    """Another program takes the engine table away while Engines runs (here
    the sqlite3 module renames it): reading, adding, changing or deleting
    an engine says why, in JSON and on the page, writes nothing, and works
    again once the table is back."""
    api = f"{live_server.url}/api/engines"
    assert requests.post(api, json={"title": "Main", "thrust": 7}, timeout=10).status_code == 201
    database = live_server.instance / "engines.sqlite3"
    with closing(sqlite3.connect(database, isolation_level=None)) as other:
        other.execute("ALTER TABLE engine RENAME TO engine_away")
        for method, url, body in [("GET", f"{api}/1", None), ("POST", api, {"title": "Spare"}),
                                  ("PATCH", f"{api}/1", {"thrust": 8}), ("DELETE", f"{api}/1", None)]:
            response = requests.request(method, url, json=body, timeout=10)
            assert response.status_code == 503, method
            assert "no such table: engine" in response.json()["error"], method
        assert "no such table: engine" in requests.get(f"{live_server.url}/engines/1/edit", timeout=10).text
        assert requests.get(f"{live_server.url}/api/health", timeout=10).json()["status"] == "ok"
        other.execute("ALTER TABLE engine_away RENAME TO engine")
    response = requests.get(f"{api}/1", timeout=10)
    assert (response.status_code, response.json()["title"], response.headers["ETag"]) == (200, "Main", '"1"')
    history = requests.get(f"{api}/1/history", timeout=10).json()["history"]
    assert [h["change"] for h in history] == ["create"], "nothing refused was recorded"
    assert requests.patch(f"{api}/1", json={"thrust": 8}, timeout=10).json()["version"] == 2
    assert live_server.stop() == 0
    assert integrity(database) == "ok"


# -- a full disk -------------------------------------------------------------------------

@pytest.fixture
def small_disk():
    need(os.geteuid() == 0, "root, to mount a small tmpfs that can fill up")
    mount_point = Path(tempfile.mkdtemp(prefix="engines-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)
    mount_point.rmdir()


def test_a_full_disk_fails_that_request_with_503_and_the_server_stays_up(small_disk):
    instance = small_disk / "instance"
    server = LiveServer(instance)
    try:
        api = f"{server.url}/api/engines"
        assert requests.post(api, json={"title": "Before the disk filled"}, timeout=10).status_code == 201
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # fill the disk, leaving a few pages
            free = shutil.disk_usage(small_disk).free
            f.write(b"\0" * max(free - 24 * 1024, 0))
        failures = []
        for i in range(2000):
            response = requests.post(api, json={"title": f"{i:04d} " + "x" * 120, "thrust": i}, timeout=10)
            if response.status_code != 201:
                failures.append((f"{i:04d} " + "x" * 120, response))
                break
        assert failures, "the disk never filled up"
        title, response = failures[0]
        assert response.status_code == 503
        assert "full" in response.json()["error"] and "nothing was changed" in response.json()["error"]
        assert requests.get(f"{server.url}/api/health", timeout=10).json()["status"] == "ok"
        titles = [e["title"] for e in requests.get(f"{api}?per_page=500", timeout=10).json()["engines"]]
        assert title not in titles
        filler.unlink()
        assert requests.post(api, json={"title": "After space came back"}, timeout=10).status_code == 201
    finally:
        assert server.stop() == 0
    assert integrity(instance / "engines.sqlite3") == "ok"
    assert "After space came back" in [t for t, _ in rows(instance / "engines.sqlite3").values()]


# -- many idle or slow clients ------------------------------------------------------------

@contextmanager
def open_files_limit(soft: int):
    """Run the block, and the servers it starts, with this soft limit of open
    files (a stock Linux desktop has 1,024), the hard limit unchanged."""
    resource = pytest.importorskip("resource")
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_hundreds_of_idle_and_slow_clients_cannot_starve_the_server(tmp_path):
    """600 connections that never send a byte and 600 that dribble a header
    (1,200: more than waitress's 100 by default, more sockets than select()
    takes, and more than a soft limit of 1,024 open files allows)."""
    resource = pytest.importorskip("resource")
    need(resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= 2048, "a hard limit of 2,048 open files or more")
    with open_files_limit(1024):
        server = LiveServer(tmp_path / "i")
    host, port = server.url.removeprefix("http://").split(":")
    idle, slow = [], []
    with open_files_limit(max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 2048)):
        try:
            for connections in (idle, slow):
                for _ in range(600):
                    connections.append(socket.create_connection((host, int(port)), timeout=10))
            for dribbling in slow:
                dribbling.sendall(f"GET /api/health HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slow: ".encode())
            time.sleep(0.5)
            for dribbling in slow:
                dribbling.sendall(b"x")
            health = requests.get(f"{server.url}/api/health", timeout=10)
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
        finally:
            for connection in idle + slow:
                connection.close()
            assert server.stop() == 0


def test_a_busy_server_keeps_its_log_for_what_matters(tmp_path):
    """Forty clients at once, more than the server's eight threads: waitress
    would write a "Task queue depth" warning for each request that waits,
    and rotate what the log is for out of it."""
    server = LiveServer(tmp_path / "i")
    try:
        def client(worker: int) -> list[int]:
            with requests.Session() as http:
                return [http.get(f"{server.url}/api/engines?q={worker}&per_page=200", timeout=10).status_code
                        for _ in range(10)]

        with ThreadPoolExecutor(max_workers=40) as pool:
            statuses = [status for statuses in pool.map(client, range(40)) for status in statuses]
        assert statuses == [200] * 400
    finally:
        assert server.stop() == 0
    log = (tmp_path / "i" / "engines.log").read_text(encoding="utf-8")
    assert "running at http://127.0.0.1:" in log
    assert "queue depth" not in log
