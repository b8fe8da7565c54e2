"""The real thing: `python engines.py` serving over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

import engines
from conftest import ROOT, LiveServer, need


def run_engines(*args, timeout=30):
    return subprocess.run([sys.executable, str(ROOT / "engines.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_serve_write_over_http_stop_with_sigterm_and_find_the_data_again(tmp_path):
    instance = tmp_path / "instance"
    server = LiveServer(instance)
    api = f"{server.url}/api/engines"
    assert requests.get(f"{server.url}/api/health", timeout=5).json()["status"] == "ok"
    main = requests.post(api, json={"title": "Main", "thrust": 100}, timeout=5)
    assert main.status_code == 201
    spare = requests.post(api, json={"title": "Spare"}, timeout=5).json()
    assert requests.patch(f"{api}/{main.json()['id']}", json={"thrust": 250}, timeout=5).status_code == 200
    assert requests.delete(f"{api}/{spare['id']}", timeout=5).status_code == 204
    assert "Main" in requests.get(server.url, timeout=5).text
    assert server.stop(signal.SIGTERM) == 0

    again = LiveServer(instance)
    try:
        body = requests.get(f"{again.url}/api/engines", timeout=5).json()
        assert [{name: e[name] for name in ("id", "title", "thrust", "version")} for e in body["engines"]] \
            == [{"id": 1, "title": "Main", "thrust": 250, "version": 2}]
    finally:
        assert again.stop(signal.SIGINT) == 0


def test_a_port_in_use_is_a_one_line_error_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_engines("--serve", "--port", str(port), "--instance", str(tmp_path / "i"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_instance_folder_that_cannot_be_created_is_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_engines("--serve", "--port", "0", "--instance", str(blocker / "instance"))
    assert result.returncode == 2
    assert result.stderr.startswith("engines: cannot create the instance folder")
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr


def test_help_explains_every_flag():
    result = run_engines("--help")
    assert result.returncode == 0
    for flag in ("--serve", "--browser", "--port", "--host", "--instance"):
        assert flag in result.stdout


def test_version_prints_the_version_and_starts_nothing(tmp_path):
    result = run_engines("--version", "--instance", str(tmp_path / "instance"))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"engines {engines.__version__}\n", "")
    assert not (tmp_path / "instance").exists()


def test_the_server_is_waitress_never_the_werkzeug_debugger(live_server):
    response = requests.get(f"{live_server.url}/api/health", timeout=5)
    assert response.headers["Server"] == "Engines"
    response = requests.get(f"{live_server.url}/console", timeout=5)
    assert response.status_code == 404


def test_bad_input_over_real_http_is_a_4xx_and_the_server_stays_up(live_server):
    api = f"{live_server.url}/api/engines"
    cursor = base64.urlsafe_b64encode(b"[" * 3000).decode()
    surrogate_cursor = base64.urlsafe_b64encode(br'["\ud800", 1]').decode()
    answers = [
        requests.post(api, data="[" * 5000, headers={"Content-Type": "application/json"}, timeout=5),
        requests.post(api, data=r'{"\ud800": 1}', headers={"Content-Type": "application/json"}, timeout=5),
        requests.get(api, params={"after": cursor}, timeout=5),
        requests.get(api, params={"sort": "title", "after": surrogate_cursor}, timeout=5),
        requests.get(live_server.url, params={"sort": "title", "before": surrogate_cursor}, timeout=5),
    ]
    assert [answer.status_code for answer in answers] == [400] * 5
    assert answers[0].json()["error"] == "The body is nested too deeply: send one JSON object of plain values."
    assert answers[1].json()["fields"] == {"\\ud800": "Unknown field.", "title": "Title is required."}
    assert requests.get(f"{live_server.url}/api/health", timeout=5).json()["status"] == "ok"
    assert requests.get(api, timeout=5).json()["total"] == 0


@pytest.mark.parametrize("situation, reason", [("no_display", "no display"), ("no_browser", "none was found")])
def test_where_no_browser_can_open_engines_says_so_in_one_line_and_serves_on(tmp_path, situation, reason):
    env = {name: value for name, value in os.environ.items() if name not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    if situation == "no_browser":  # a display, but no browser on the PATH
        (tmp_path / "empty").mkdir()
        env.update(DISPLAY=":99", PATH=str(tmp_path / "empty"))
    process = subprocess.Popen([sys.executable, str(ROOT / "engines.py"), "--port", "0", "--instance",
                                str(tmp_path / "i")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", process.stdout.readline()).group(0)
        said = select.select([process.stderr], [], [], 15)[0] and process.stderr.readline()
        assert said == f"engines: no browser could be opened here ({reason}): open {url} yourself\n"
        assert requests.get(f"{url}api/health", timeout=5).json()["status"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        process.stdout.close()
        process.stderr.close()


# -- what the process holds: python engines.py as a module, memory given back --

def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def resident_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def test_python_engines_py_serves_as_the_module_in_the_same_process_with_the_same_options(tmp_path):
    """CPython would keep the syntax tree of engines.py (10 MB) for as long
    as the script runs: it starts over as the module, from its bytecode,
    keeping the interpreter's options and the script's arguments."""
    need(Path("/proc/self/cmdline").exists(), "/proc, to read a process's command line (Linux)")
    server = LiveServer(tmp_path / "i", interpreter=("-X", "dev", "-W", "error::ResourceWarning"))
    try:
        assert requests.get(f"{server.url}/api/health", timeout=5).json()["status"] == "ok"
        assert command_line(server.process.pid) == [
            sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", engines.HANDOVER,
            str(ROOT / "engines.py"), "engines", "--serve", "--port", "0", "--instance", str(tmp_path / "i")]
    finally:
        assert server.stop() == 0


# A program that runs engines.py as its script, the way memray or scalene do
# (runpy.run_path), with no trace or profile function of Python's own.
RUN_AS_SCRIPT = "import runpy, sys; sys.argv[:] = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


@pytest.mark.parametrize("runner, stdin", [(("-m", "pdb"), "continue\n"), (("-c", RUN_AS_SCRIPT), None)],
                         ids=["pdb", "runpy.run_path"])
def test_run_by_a_debugger_or_another_tool_python_engines_py_stays_in_its_hands(tmp_path, runner, stdin):
    """engines.py starts over only when the interpreter itself was told to
    run it: a debugger (pdb, which drops its trace on `continue`) or a
    profiler that runs it keeps it."""
    need(Path("/proc/self/cmdline").exists(), "/proc, to read a process's command line (Linux)")
    server = LiveServer(tmp_path / "i", interpreter=runner, stdin=stdin)
    try:
        assert requests.get(f"{server.url}/api/health", timeout=5).json()["status"] == "ok"
        assert command_line(server.process.pid)[:4] == [sys.executable, *runner, str(ROOT / "engines.py")]
    finally:
        server.stop()


def freed_in_holes(megabytes: int) -> list[bytearray]:
    """Allocate `megabytes` in 4 KiB blocks (glibc's malloc: pymalloc takes
    only blocks of up to 512 bytes), then free all but one block in 16: free
    memory in holes among blocks in use, which glibc does not give back by
    itself. Returns the blocks kept."""
    blocks = [bytearray(4096) for _ in range(megabytes * 256)]
    kept = blocks[::16]
    del blocks
    return kept


def test_the_server_gives_back_the_memory_freed_after_requests_and_not_before(tmp_path):
    need(engines.glibc() is not None, "glibc's malloc (Linux), whose freed memory the server gives back")
    app = engines.create_app(instance_path=tmp_path / "i")
    server = engines.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        kept = freed_in_holes(80)
        freed = resident_bytes()
        time.sleep(engines.TRIM_AFTER + 1)
        assert resident_bytes() > freed - 20e6, "given back with no request: not the server's doing"

        url = f"http://127.0.0.1:{server.effective_port}/api/health"
        assert requests.get(url, timeout=5).json()["status"] == "ok"
        deadline = time.monotonic() + engines.TRIM_AFTER + 10
        while resident_bytes() > freed - 50e6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert resident_bytes() <= freed - 50e6, (freed, resident_bytes())
        del kept
    finally:
        server.close()
        with app.app_context():
            engines.db.engine.dispose()


def test_engines_on_sqlite_never_loads_postgresql_s_dialect(tmp_path):
    """PostgreSQL's SQLAlchemy dialect is 2.4 MB of memory that an Engines on
    SQLite has no use for: neither the model nor any request loads it. (An
    upgrade loads it, with Alembic: the database here is made beforehand.)"""
    with engines.create_app(instance_path=tmp_path / "i").app_context():
        engines.db.engine.dispose()
    script = f"""
import sys
import engines
app = engines.create_app(instance_path={str(tmp_path / "i")!r})
client = app.test_client()
created = client.post("/api/engines", json={{"title": "Main engine", "thrust": 5}}).get_json()
client.patch(f"/api/engines/{{created['id']}}", json={{"thrust": 6}})
for url in ("/", "/api/engines?q=ma", "/api/engines?q=main", "/api/engines?sort=-title", "/deleted",
            f"/api/engines/{{created['id']}}/history"):
    assert client.get(url).status_code == 200, url
client.delete(f"/api/engines/{{created['id']}}")
print(sorted(name for name in sys.modules if name.startswith("sqlalchemy.dialects.postgresql")))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
