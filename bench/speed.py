"""How fast Engines answers, imports and exports, against baselines measured
in the same run: the bench of issue 9.

    bench/run                          # installs wrk and the venv, then runs this
    .venv/bin/python bench/speed.py    # 100k and 1M engines, 3 runs of 5 s per case
    .venv/bin/python bench/speed.py --quick        # 10k engines, 1 run of 1 s (the tests)
    .venv/bin/python bench/speed.py --sizes 100000 --runs 5 --duration 8

For each size it copies a database that `flask --app engines seed` made
(cached in build/bench/databases/ by size and SCHEMA_REVISION), starts
Engines (`engines.py --serve`), bare Flask (bench/bare_flask.py) and
datasette (on a copy of the same file), each in its own process on
127.0.0.1, and loads each case with `wrk -t2 -c10` (bench/wrk.lua). Every
run goes through all cases in turn, so a noisy machine slows all alike; a
case's figures are the medians of its runs. Then: the memory of the Engines
server, and (at the first size) `flask import` and `flask export` of the CSV
export against raw sqlite3 and csv.

Each figure is judged by a goal of issue 9, as a ratio to a baseline of the
same run; at the other sizes, by growth (within 1.5x of the first size). It
prints one table and writes it, with the machine and settings, to
bench/results/latest.md and latest.json, and a chart to latest.png. A
benchmark, not a test: it exits 0 whatever the goals say.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import engines  # noqa: E402  (after the path: engines.py is a module beside bench/, not a package)

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
WRK_THREADS, WRK_CONNECTIONS = 2, 10
WRK_TIMEOUT_S = 10  # a request slower than this counts as an error (wrk's "timeout")
DATASETTE_SETTINGS = {"sql_time_limit_ms": "10000", "num_sql_threads": "3"}
DATASETTE_QUERY = "_size=50&_nosuggest=1"  # a page of 50, as Engines; no facet suggestions
GROWTH = 1.5  # at a bigger size, every request figure within 1.5x of the first size's
RSS_GOAL_MB = 70
TRANSFER_GOAL_S, TRANSFER_GOAL_RATIO = 0.5, 0.20
DEEP = 0.9  # a deep page starts 90% of the way down the list


# ---------------------------------------------------------------------------
# The cases and their goals
# ---------------------------------------------------------------------------

@dataclass
class Case:
    """One load to measure: a request (or a random one) sent to one server."""

    key: str
    label: str
    server: str  # "engines", "bare", "datasette", "engines-no-history" or "engines-unkept"
    path: str
    mode: str = "fixed"  # or "get-random", "patch-random" (bench/wrk.lua)
    checks: list[tuple] = field(default_factory=list)  # ("ratio", base case, at least) | ("p99", ms) | ("errors",)


SEARCH_FAST = [("ratio", "bare", 0.15), ("p99", 25)]
SEARCH_SHORT = [("p99", 100)]


def request_cases(cursors: dict[str, str]) -> list[Case]:
    """Every request case, with the deep-page cursors of this database."""
    datasette = f"/engines/engine.json?{DATASETTE_QUERY}"
    cases = [
        Case("bare", "bare Flask: GET / (baseline)", "bare", "/"),
        Case("datasette", "datasette table JSON (baseline)", "datasette", datasette),
        Case("datasette-search", "datasette title__contains=9999", "datasette", f"{datasette}&title__contains=9999"),
        Case("first-page", "JSON first page (sort by id)", "engines", "/api/engines",
             checks=[("ratio", "bare", 0.25), ("ratio", "datasette", 3.0)]),
        Case("html", "HTML page GET /", "engines", "/", checks=[("ratio", "bare", 0.15)]),
        Case("search-9999", "search q=9999 (rare)", "engines", "/api/engines?q=9999", checks=SEARCH_FAST),
        Case("search-engine", "search q=engine (all match)", "engines", "/api/engines?q=engine", checks=SEARCH_FAST),
        Case("search-9", "search q=9 (1 char)", "engines", "/api/engines?q=9", checks=SEARCH_SHORT),
        Case("search-99", "search q=99 (2 chars)", "engines", "/api/engines?q=99", checks=SEARCH_SHORT),
        Case("search-x", "search q=x (1 char, none match)", "engines", "/api/engines?q=x", checks=SEARCH_SHORT),
    ]
    # The same requests with nothing kept (KEPT_ANSWERS_BYTES = 0): what a list
    # costs when it is read and written afresh, as the first time it is asked.
    cases += [
        Case("first-page-unkept", "JSON first page, nothing kept", "engines-unkept", "/api/engines"),
        Case("html-unkept", "HTML page GET /, nothing kept", "engines-unkept", "/"),
        Case("search-9999-unkept", "search q=9999, nothing kept", "engines-unkept", "/api/engines?q=9999"),
        Case("search-x-unkept", "search q=x, nothing kept", "engines-unkept", "/api/engines?q=x"),
    ]
    for key in engines.SORT_KEYS:
        for descending in (False, True):
            for deep in (False, True):
                if key == "id" and not descending and not deep:
                    continue  # that is the first page
                suffix = ("-desc" if descending else "") + ("-deep" if deep else "")
                base = f"sort-id{suffix}" if suffix else "first-page"
                sort = "-" * descending + key
                query = [f"sort={sort}"] if sort != "id" else []
                if deep:
                    query.append(f"after={cursors[sort]}")
                cases.append(Case(f"sort-{key}{suffix}", f"sort={sort}, {'deep page' if deep else 'page 1'}",
                                  "engines", "/api/engines?" + "&".join(query),
                                  checks=[] if key == "id" else [("ratio", base, 0.80)]))
    cases += [
        Case("get-one", "GET /api/engines/<random id>", "engines", "/api/engines/1", "get-random",
             checks=[("ratio", "bare", 0.40)]),
        Case("patch-no-history", "PATCH, no history written (baseline)", "engines-no-history", "/api/engines/1",
             "patch-random"),
        Case("patch", 'PATCH <random id> {"thrust": n}', "engines", "/api/engines/1", "patch-random",
             checks=[("ratio", "bare", 0.15), ("ratio", "patch-no-history", 0.80), ("p99", 50), ("errors",)]),
    ]
    return cases


BASE_NAMES = {"bare": "bare", "datasette": "datasette", "patch-no-history": "PATCH without history"}


def goal_text(checks: list[tuple]) -> str:
    words = []
    for check in checks:
        if check[0] == "ratio":
            base, least = check[1], check[2]
            name = BASE_NAMES.get(base, "sort by id")
            words.append(f">= {least:.0%} of {name}" if least < 1 else f">= {least:g}x {name}")
        elif check[0] == "p99":
            words.append(f"p99 <= {check[1]} ms")
        else:
            words.append("no errors")
    return ", ".join(words)


# ---------------------------------------------------------------------------
# Databases: seeded once per size and schema revision, copied for each run
# ---------------------------------------------------------------------------

def engines_env(instance: Path | None = None) -> dict[str, str]:
    """The environment for an Engines process: none of the caller's ENGINES_*
    settings (they would change what is measured), and the instance folder."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ENGINES_")}
    if instance is not None:
        env["ENGINES_INSTANCE"] = str(instance)
    return env


def flask_command(instance: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """`flask --app engines ARGS` on `instance`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "engines", *args], cwd=ROOT,
                          env=engines_env(instance), check=True, capture_output=True, text=True, **kwargs)


def seeded_database(size: int, build_dir: Path) -> Path:
    """A database of `size` engines made by `flask --app engines seed`,
    reused while SCHEMA_REVISION is the same (seeding 1M takes a while)."""
    cached = build_dir / "databases" / f"rev{engines.SCHEMA_REVISION}-{size}" / "engines.sqlite3"
    if cached.exists():
        return cached
    staging = cached.parent.with_name(cached.parent.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    print(f"seeding {size:,} engines into {cached.parent} ...", flush=True)
    started = time.perf_counter()
    flask_command(staging, "seed", "--count", str(size))
    with closing(sqlite3.connect(staging / "engines.sqlite3")) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert connection.execute("SELECT count(*) FROM engine").fetchone()[0] == size
    print(f"seeded {size:,} engines in {time.perf_counter() - started:.0f} s", flush=True)
    for name in ("secret_key", "engines.log"):
        (staging / name).unlink(missing_ok=True)  # an instance is made afresh for each run
    staging.rename(cached.parent)  # only a finished seed is ever found in the cache
    return cached


def fresh_copy(database: Path, folder: Path, name: str = "engines.sqlite3") -> Path:
    """A consistent copy of `database` (SQLite's backup API) alone in `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    target = folder / name
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as source, \
            closing(sqlite3.connect(target)) as copy:
        source.backup(copy)
    return target


def deep_cursors(database: Path, size: int) -> dict[str, str]:
    """For each sort, the `after` cursor of the engine DEEP of the way down
    the list, encoded by Engines' own encode_cursor."""
    cursors = {}
    order = {"id": "id", "title": "lower(title)", "thrust": "thrust"}
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
        for key, expression in order.items():
            for direction in ("", "-"):
                sql_direction = "DESC" if direction else "ASC"
                row = connection.execute(
                    f"SELECT id, title, thrust FROM engine ORDER BY {expression} {sql_direction}, id {sql_direction}"
                    " LIMIT 1 OFFSET ?", (int(size * DEEP),)).fetchone()
                engine = SimpleNamespace(id=row[0], title=row[1], thrust=row[2])
                cursors[direction + key] = engines.encode_cursor(engine, key)
    return cursors


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------

class Server:
    """A server in its own process, its output in a log file; `url` once it listens."""

    def __init__(self, name: str, command: list[str], log_path: Path, url_pattern: str, env: dict | None = None):
        self.name = name
        self.log_path = log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env=env or engines_env())
        deadline = time.monotonic() + 120
        while not (match := re.search(url_pattern, log_path.read_text(errors="replace"))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        self.url = match.group(1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident memory of the server process now, in bytes (VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def start_engines(instance: Path, logs: Path, name: str = "Engines", log: str = "engines.log",
                  script: Path = ROOT / "engines.py", settings: dict[str, str] | None = None) -> Server:
    """An Engines server on `instance`: engines.py, or a variant of it
    (`script`), with ENGINES_* `settings` in its environment."""
    return Server(name, [sys.executable, str(script), "--serve", "--port", "0", "--instance", str(instance)],
                  logs / log, r"running at (http://127\.0\.0\.1:\d+)/", env={**engines_env(), **(settings or {})})


def start_bare_flask(logs: Path) -> Server:
    return Server("bare Flask", [sys.executable, str(ROOT / "bench" / "bare_flask.py"), "--port", "0"],
                  logs / "bare_flask.log", r"running at (http://127\.0\.0\.1:\d+)/")


def start_datasette(database: Path, logs: Path) -> Server:
    settings = [arg for name, value in DATASETTE_SETTINGS.items() for arg in ("--setting", name, value)]
    return Server("datasette", [sys.executable, "-m", "datasette", "serve", str(database), "--port", "0", *settings],
                  logs / "datasette.log", r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_until_idle(pid: int, timeout: float = 900) -> None:
    """Wait until the server has finished what wrk left it (slow requests go
    on after wrk stops): 0.3 s in which it used no CPU time."""
    deadline = time.monotonic() + timeout
    last, quiet = cpu_seconds(pid), 0
    while quiet < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.005 else 0  # not one clock tick (10 ms) in 100 ms
        last = now


# ---------------------------------------------------------------------------
# Measuring requests with wrk
# ---------------------------------------------------------------------------

def check_answer(url: str, case: Case) -> float:
    """One request as wrk will send it, alone, which must succeed (a wrong
    URL or cursor is a failure of the bench, not a fast figure); it also
    warms up. Returns its latency in ms: what a case too slow for wrk to
    finish any request in its run still tells."""
    method, body = ("PATCH", b'{"thrust": 1}') if case.mode == "patch-random" else ("GET", None)
    request = urllib.request.Request(url + case.path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            response.read()
        return (time.perf_counter() - started) * 1000
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{case.label}: {method} {case.path} answered {exc.code}: {exc.read()[:300]!r}") from None


def run_wrk(url: str, case: Case, duration: int, ids: int) -> dict:
    """Load `case` for `duration` seconds: requests/s, p50, p99 (ms) and errors."""
    env = {**os.environ, "BENCH_MODE": case.mode, "BENCH_IDS": str(ids)}
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", f"--timeout={WRK_TIMEOUT_S}s",
               "-s", str(WRK_SCRIPT), url + case.path]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration + 120)
    found = re.search(r"^bench-result (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed on {case.label}: {done.stdout}{done.stderr}")
    result = json.loads(found.group(1))
    finished = result["requests"]
    return {
        "requests": finished,
        "rps": finished / (result["duration_us"] / 1e6),
        # wrk's percentiles of an empty histogram are 0: no request finished.
        "p50_ms": result["p50_us"] / 1000 if finished else None,
        "p99_ms": result["p99_us"] / 1000 if finished else None,
        "errors": sum(result["errors"].values()),
        "error_kinds": {kind: n for kind, n in result["errors"].items() if n},
    }


def median_figures(runs: list[dict]) -> dict:
    """A case's figures over its runs: medians, and every error."""
    def median(name):
        values = [run[name] for run in runs if run[name] is not None]
        return statistics.median(values) if values else None
    return {"rps": median("rps"), "p50_ms": median("p50_ms"), "p99_ms": median("p99_ms"),
            "alone_ms": median("alone_ms"),
            "errors": sum(run["errors"] for run in runs), "runs": runs}


def measure_size(size: int, database: Path, bare: Server, args, work: Path) -> tuple[dict, dict]:
    """Every request case at one size, `args.runs` times in turn: the
    figures of each case, and the Engines server's RSS after them all
    (right after, and at rest)."""
    instance = work / f"engines-{size}"
    fresh_copy(database, instance)
    datasette_file = fresh_copy(database, work / f"datasette-{size}")  # its own copy of the same file
    logs = work / f"logs-{size}"
    logs.mkdir(parents=True, exist_ok=True)
    servers = {"bare": bare}
    try:
        servers["engines"] = start_engines(instance, logs)
        without_history = work / f"engines-no-history-{size}"
        fresh_copy(database, without_history)
        servers["engines-no-history"] = start_engines(without_history, logs, "Engines without history",
                                                      "engines-no-history.log",
                                                      script=ROOT / "bench" / "engines_without_history.py")
        unkept = work / f"engines-unkept-{size}"
        fresh_copy(database, unkept)
        # Keeping no answer (KEPT_ANSWERS_BYTES = 0): every list read afresh.
        servers["engines-unkept"] = start_engines(unkept, logs, "Engines keeping nothing", "engines-unkept.log",
                                                  settings={"ENGINES_KEPT_ANSWERS_BYTES": "0"})
        servers["datasette"] = start_datasette(datasette_file, logs)
        for server in servers.values():
            wait_until_idle(server.pid)
        figures = measure_cases(servers, request_cases(deep_cursors(database, size)), args, size, "")
        rss = {"right_after": servers["engines"].rss()}
        # At rest: idle, and past the moment it gives back what its requests
        # freed (engines.giving_back_freed_memory).
        wait_until_idle(servers["engines"].pid)
        time.sleep(engines.TRIM_AFTER + 1)
        rss["at_rest"] = servers["engines"].rss()
    finally:
        for name in ("engines", "engines-no-history", "engines-unkept", "datasette"):
            if name in servers:
                servers[name].stop()
    return figures, rss


def measure_cases(servers: dict[str, Server], cases: list[Case], args, size: int, where: str) -> dict:
    """Every case, sent to its server, `args.runs` times in turn: {case key:
    the medians of its figures}. Each says how it went as it ends."""
    runs: dict[str, list[dict]] = {case.key: [] for case in cases}
    for run in range(1, args.runs + 1):
        for case in cases:
            server = servers[case.server]
            alone_ms = check_answer(server.url, case)
            figures = {**run_wrk(server.url, case, args.duration, ids=size), "alone_ms": alone_ms}
            wait_until_idle(server.pid)
            runs[case.key].append(figures)
            print(f"{size_name(size):>4}{where} run {run}/{args.runs}  {case.label:<38} {figures['rps']:>9,.1f} req/s  "
                  f"p99 {milliseconds(figures['p99_ms']):>9}  errors {figures['errors']}", flush=True)
    return {case.key: median_figures(runs[case.key]) for case in cases}


# ---------------------------------------------------------------------------
# The same requests on PostgreSQL (--postgresql)
# ---------------------------------------------------------------------------

def as_postgres(*args) -> list[str]:
    """A PostgreSQL server command, as the postgres user when we are root (initdb refuses root)."""
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + [str(a) for a in args]


class PostgreSQL:
    """A throwaway PostgreSQL cluster listening only on a Unix socket in its
    own folder, as tests/conftest.py starts one, with fsync on (a real one)."""

    def __init__(self):
        self.bin = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        self.base = Path(tempfile.mkdtemp(prefix="engines-bench-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self.data = self.base / "data"
        subprocess.run(as_postgres(self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E",
                                   "UTF8", "--locale=C.UTF-8"), cwd=self.base, check=True, capture_output=True)
        subprocess.run(as_postgres(self.bin / "pg_ctl", "-D", self.data, "-l", self.base / "server.log", "-w",
                                   "-o", f"-c listen_addresses='' -k {self.base}", "start"),
                       cwd=self.base, check=True, capture_output=True)

    def new_database(self, name: str) -> str:
        subprocess.run(as_postgres(self.bin / "createdb", "-h", self.base, "-U", "postgres", "-T", "template0",
                                   "-E", "UTF8", "--locale=C.UTF-8", name), check=True, capture_output=True)
        return f"postgresql+psycopg://postgres@/{name}?host={self.base}"

    def stop(self) -> None:
        subprocess.run(as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "stop"), cwd=self.base,
                       capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def measure_postgresql(size: int, bare: Server, args, work: Path, cursors: dict[str, str]) -> dict:
    """Engines' request cases at `size` on PostgreSQL, seeded as the SQLite
    database is (so the same cursors point at the same engines), with bare
    Flask measured again between them: {case key: figures}."""
    cluster = PostgreSQL()
    try:
        instance = work / f"engines-postgresql-{size}"
        instance.mkdir(parents=True)
        url = cluster.new_database(f"engines_{size}")
        (instance / "config.py").write_text(f"SQLALCHEMY_DATABASE_URI = {url!r}\n", encoding="utf-8")
        flask_command(instance, "seed", "--count", str(size), timeout=3600)
        subprocess.run(as_postgres(cluster.bin / "psql", "-h", cluster.base, "-U", "postgres", "-d", f"engines_{size}",
                                   "-c", "VACUUM ANALYZE"), check=True, capture_output=True)
        server = start_engines(instance, work)
        cases = [case for case in request_cases(cursors) if case.server in ("engines", "bare")]
        try:
            return measure_cases({"engines": server, "bare": bare}, cases, args, size, " PostgreSQL")
        finally:
            server.stop()
    finally:
        cluster.stop()


def postgresql_table(cases: list[Case], figures: dict, size: int) -> str:
    """The PostgreSQL figures as a markdown table, each request's req/s also
    as a fraction of bare Flask's measured in the same turns."""
    bare = figures["bare"]["rps"]
    lines = [f"| case ({size_name(size)} engines, PostgreSQL) | req/s | p50 | p99 | errors | x bare |",
             "|---|---:|---:|---:|---:|---:|"]
    for case in cases:
        if case.key not in figures:
            continue
        f = figures[case.key]
        ratio = "" if case.key == "bare" else f"{f['rps'] / bare:.3f}"
        lines.append(f"| {case.label} | {f['rps']:,.1f} | {milliseconds(f['p50_ms'])} | {milliseconds(f['p99_ms'])} "
                     f"| {f['errors']} | {ratio} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Import and export, against raw sqlite3 and csv
# ---------------------------------------------------------------------------

# A `flask --app engines` command timed inside its process: after Python's
# start, the imports and create_app (which opens the database), from the
# command's first line to its last, as the click command itself runs.
TIMED_COMMAND = """
import sys, time
import engines
app = engines.create_app(instance_path=sys.argv[1])
runner = app.test_cli_runner()
started = time.perf_counter()
result = runner.invoke(args=sys.argv[2:])
elapsed = time.perf_counter() - started
if result.exit_code != 0:
    sys.exit(f"{result.output}{result.exception!r}")
print(elapsed)
"""


def timed_in_process(instance: Path, *args: str) -> float:
    done = subprocess.run([sys.executable, "-c", TIMED_COMMAND, str(instance), *args], cwd=ROOT,
                          env=engines_env(), check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def timed_command(instance: Path, *args: str) -> float:
    """Wall time of the whole `flask --app engines ARGS` process."""
    started = time.perf_counter()
    flask_command(instance, *args)
    return time.perf_counter() - started


def raw_import(database: Path, export: Path) -> dict[str, float]:
    """Raw sqlite3 on the same rows: seconds to read the CSV export with csv
    (`raw_read_csv`), then to insert the rows with executemany into the
    same, empty, engine table, its search indexes built and its count kept as
    a bulk load does it, and commit (`raw_import`: the baseline), and the
    same into a bare table without CHECKs, indexes or triggers, to show their
    cost."""
    started = time.perf_counter()
    with export.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        next(reader)
        # updated_at is stored as SQLAlchemy stores it: '2026-11-28 16:53:59.815236'
        rows = [(int(i), title, int(thrust), int(version), at[:10] + " " + at[11:26])
                for i, title, thrust, version, at in reader]
    times = {"raw_read_csv": time.perf_counter() - started}
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA synchronous = FULL")  # as Engines: the commit is on disk
        connection.execute("CREATE TABLE engine_without_checks (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "
                           "title VARCHAR(128) NOT NULL, thrust INTEGER NOT NULL, version INTEGER NOT NULL, "
                           "updated_at DATETIME NOT NULL)")
        connection.commit()
        for table, name in (("engine", "raw_import"), ("engine_without_checks", "raw_import_without_checks")):
            started = time.perf_counter()
            if table == "engine":
                # What any program loading many rows into Engines' schema does best: mark the load,
                # so that the triggers leave the search index and the count to one statement each.
                connection.execute("INSERT INTO engine_bulk_load (id) VALUES (0)")
            connection.executemany(f"INSERT INTO {table} (id, title, thrust, version, updated_at) "
                                   "VALUES (?, ?, ?, ?, ?)", rows)
            if table == "engine":
                for statement in engines.search_index_statements("true"):
                    connection.execute(statement)
                connection.execute("UPDATE engine_stats SET engines = (SELECT count(*) FROM engine)")
                connection.execute("DELETE FROM engine_bulk_load")
            connection.commit()
            times[name] = time.perf_counter() - started
    return times


def raw_export(database: Path, export: Path) -> float:
    """Seconds to SELECT every engine with sqlite3 and write the same CSV
    as Engines' export with csv."""
    started = time.perf_counter()
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection, \
            export.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(engines.EXPORT_FIELDS)
        writer.writerows((i, title, thrust, version, at.replace(" ", "T") + "+00:00") for i, title, thrust, version, at
                         in connection.execute("SELECT id, title, thrust, version, updated_at FROM engine ORDER BY id"))
    return time.perf_counter() - started


def count_engines(database: Path) -> int:
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
        return connection.execute("SELECT count(*) FROM engine").fetchone()[0]


def measure_transfers(size: int, database: Path, runs: int, work: Path) -> dict:
    """`flask import` of the CSV export into an empty Engines, and `flask
    export`, timed in the process and whole, against raw sqlite3 and csv."""
    source = work / f"transfer-source-{size}"
    fresh_copy(database, source)
    empty_instance = work / "empty"
    shutil.rmtree(empty_instance, ignore_errors=True)
    flask_command(empty_instance, "init-db")  # an empty database, as Engines makes it
    empty = empty_instance / "engines.sqlite3"
    export, raw_file = work / f"export-{size}.csv", work / f"raw-export-{size}.csv"
    times: dict[str, list[float]] = {name: [] for name in (
        "export", "export_wall", "raw_export", "import", "import_wall", "raw_import", "raw_read_csv",
        "raw_import_without_checks")}
    for _ in range(runs):
        times["export"].append(timed_in_process(source, "export", str(export)))
        times["export_wall"].append(timed_command(source, "export", str(work / "export-wall.csv")))
        times["raw_export"].append(raw_export(source / "engines.sqlite3", raw_file))
        for kind in ("import", "import_wall", "raw_import"):
            target = fresh_copy(empty, work / f"import-{kind}")
            if kind == "import":
                times[kind].append(timed_in_process(target.parent, "import", str(export)))
            elif kind == "import_wall":
                times[kind].append(timed_command(target.parent, "import", str(export)))
            else:
                for name, seconds in raw_import(target, export).items():
                    times[name].append(seconds)
            if count_engines(target) != size:
                raise RuntimeError(f"{kind} of {export} did not add {size:,} engines")
        print(f"{size_name(size):>4} import {times['import'][-1]:.2f} s (raw {times['raw_import'][-1]:.2f} s), "
              f"export {times['export'][-1]:.2f} s (raw {times['raw_export'][-1]:.2f} s)", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"size": size, "rows": size, "runs": times, **medians,
            "same_csv_as_raw": export.read_bytes() == raw_file.read_bytes()}


# ---------------------------------------------------------------------------
# Judging: the goals of issue 9, one row each
# ---------------------------------------------------------------------------

def size_name(size: int) -> str:
    for unit, word in ((1_000_000, "M"), (1000, "k")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{word}"
    return f"{size:,}"


def milliseconds(value: float | None) -> str:
    if value is None:
        return "none done"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def judge_request(case: Case, size: int, first: int, figures: dict[int, dict]) -> dict:
    """The table row of a request case at one size: its figures, ratio to
    bare Flask, its goal (at the first size) or its growth (at the others)."""
    mine = figures[size][case.key]

    def ratio(key: str, at: int = size) -> float | None:
        base = figures[at][key]["rps"]
        return figures[at][case.key]["rps"] / base if base else None

    row = {"key": case.key, "case": case.label, "size": size, "rps": mine["rps"], "p50_ms": mine["p50_ms"],
           "p99_ms": mine["p99_ms"], "errors": mine["errors"], "x_bare": ratio("bare"), "met": None, "measured": ""}
    if case.server != "engines":
        row["goal"] = "baseline" if case.key in BASE_NAMES else "reference"
        return row
    if size == first and not case.checks:
        row["goal"] = "baseline of sort"
        return row
    met, notes = mine["errors"] == 0, []
    if size == first:
        row["goal"] = goal_text(case.checks)
        for check in case.checks:
            if check[0] == "ratio":
                value = ratio(check[1])
                met &= value is not None and value >= check[2]
                if check[1] != "bare":
                    notes.append(f"{value or 0:.2f}x {BASE_NAMES.get(check[1], 'sort by id')}")
            elif check[0] == "p99":
                met &= mine["p99_ms"] is not None and mine["p99_ms"] <= check[1]
    else:
        row["goal"] = f"within {GROWTH:g}x of {size_name(first)}"
        then, now = ratio("bare", first), ratio("bare")
        speed = now / then if then and now is not None else None
        p99_then = figures[first][case.key]["p99_ms"]
        slower = mine["p99_ms"] / p99_then if mine["p99_ms"] is not None and p99_then else None
        met &= speed is not None and speed >= 1 / GROWTH and slower is not None and slower <= GROWTH
        notes.append(f"req/s {speed:.2f}x" if speed is not None else "req/s -")
        notes.append(f"p99 {slower:.2f}x" if slower is not None else "p99 -")
    if mine["errors"]:
        notes.append(f"{mine['errors']} errors")
    if not mine["rps"]:
        notes.append(f"no request finished in most runs; one alone took {milliseconds(mine['alone_ms'])}")
    row.update(met=met, measured=", ".join(notes))
    return row


def judge_transfer(name: str, transfers: dict) -> dict:
    work, raw, whole = transfers[name], transfers[f"raw_{name}"], transfers[f"{name}_wall"]
    speed = raw / work
    if name == "import":
        raw_words = (f"raw executemany {raw:.2f} s (reading the CSV: {transfers['raw_read_csv']:.2f} s more; "
                     f"into a bare table: {transfers['raw_import_without_checks']:.2f} s)")
    else:
        raw_words = f"raw SELECT and csv {raw:.2f} s"
    return {"key": name, "case": f"flask {name}, CSV ({transfers['rows']:,} engines)", "size": transfers["size"],
            "rps": None, "p50_ms": None, "p99_ms": None, "errors": 0, "x_bare": None,
            "goal": f"<= {TRANSFER_GOAL_S:g} s, or >= {TRANSFER_GOAL_RATIO:.0%} of raw",
            "met": work <= TRANSFER_GOAL_S or speed >= TRANSFER_GOAL_RATIO,
            "measured": f"{work:.2f} s in the process, {speed:.2f}x {raw_words}; whole command {whole:.2f} s"}


def judge_rss(size: int, first: int, rss: dict | int) -> dict:
    """The RSS row, judged at rest after the bench. Older saved results
    hold one figure, read right after the last case."""
    if isinstance(rss, int):
        rss = {"right_after": rss, "at_rest": rss}
    megabytes, right_after = rss["at_rest"] / 1e6, rss["right_after"] / 1e6
    return {"key": "rss", "case": "RSS of the Engines server at rest, after", "size": size, "rps": None,
            "p50_ms": None, "p99_ms": None, "errors": 0, "x_bare": None,
            "goal": f"<= {RSS_GOAL_MB} MB" if size == first else "reference",
            "met": megabytes <= RSS_GOAL_MB if size == first else None,
            "measured": f"{megabytes:.0f} MB; {right_after:.0f} MB right after the last case"}


def table_rows(cases: list[Case], sizes: list[int], figures: dict, transfers: dict | None, rss: dict) -> list[dict]:
    rows = []
    for size in sizes:
        rows += [judge_request(case, size, sizes[0], figures) for case in cases]
        if size == sizes[0] and transfers:
            rows += [judge_transfer("import", transfers), judge_transfer("export", transfers)]
        rows.append(judge_rss(size, sizes[0], rss[size]))
    return rows


COLUMNS = ("case", "engines", "req/s", "p50", "p99", "errors", "x bare", "goal", "met", "measured")


def cells(row: dict) -> list[str]:
    requests = row["rps"] is not None
    return [row["case"], size_name(row["size"]),
            f"{row['rps']:,.1f}" if requests else "",
            milliseconds(row["p50_ms"]) if requests else "", milliseconds(row["p99_ms"]) if requests else "",
            str(row["errors"]) if requests else "",
            f"{row['x_bare']:.3f}" if row["x_bare"] is not None and row["key"] != "bare" else "",
            row["goal"], {True: "yes", False: "NO", None: ""}[row["met"]], row["measured"]]


def text_table(rows: list[dict]) -> str:
    table = [list(COLUMNS)] + [cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    numeric = {2, 3, 4, 5, 6}
    return "\n".join("  ".join(cell.rjust(width) if i in numeric else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
                     for line in table)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if i in (2, 3, 4, 5, 6) else "---"
                                                              for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells(row)) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The machine, and what the results are written to
# ---------------------------------------------------------------------------

def machine() -> dict:
    from importlib.metadata import version

    os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024**2
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %cs", "--", "engines.py"],
                            capture_output=True, text=True).stdout.strip()  # the last commit that changed it
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "engines.py"], capture_output=True,
                             text=True).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "description": f"{os_name}, {cpu}, {os.cpu_count()} cores, {memory} GiB, Python {platform.python_version()}, "
                       f"SQLite {sqlite3.sqlite_version}, {wrk}, datasette {version('datasette')}",
        "load_average_at_start": os.getloadavg(),
        "engines_commit": commit + (" (engines.py changed since)" if changed else ""),
        "schema_revision": engines.SCHEMA_REVISION,
    }


def settings_text(args) -> str:
    datasette = " ".join(f"--setting {name} {value}" for name, value in DATASETTE_SETTINGS.items())
    return (f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{args.duration}s --timeout={WRK_TIMEOUT_S}s; "
            f"{args.runs} run(s) of each case, taken in turns, medians reported; errors summed over the runs. "
            f"Engines and bare Flask on waitress with 8 threads. datasette serve COPY {datasette}, "
            f"table JSON `/engines/engine.json?{DATASETTE_QUERY}` (no facet suggestions, as with "
            "suggest_facets off) and `title__contains` for search. Deep pages start "
            f"{DEEP:.0%} of the way down the list. Import and export (CSV): median of {args.runs}, the flask "
            "command timed inside its process (after Python's start-up, the imports and create_app); the raw "
            "import is sqlite3 executemany of the rows already read from the CSV, into the same empty schema, "
            "marked as a bulk load (its two search indexes and its count built in one statement each), one commit; "
            "the raw export is a sqlite3 SELECT written with the csv module, to the same bytes.")


def write_results(results: dict, rows: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest.json").write_text(json.dumps({**results, "table": rows}, indent=1) + "\n")
    (folder / "latest.md").write_text(
        f"# Engines speed, {results['machine']['date']}\n\n"
        f"{results['machine']['description']}; load average at start "
        f"{' '.join(f'{n:.2f}' for n in results['machine']['load_average_at_start'])}. "
        f"engines.py of commit {results['machine']['engines_commit']}, schema revision "
        f"{results['machine']['schema_revision']}.\n\n"
        f"{markdown_table(rows)}\n\n{results['settings']}\n")
    draw_chart(results, rows, folder / "latest.png")


def draw_chart(results: dict, rows: list[dict], path: Path) -> None:
    """Per request case, req/s as a fraction of bare Flask and p99, each size
    a bar (green: goal met, red: missed, grey: baseline), goals as ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter
    from matplotlib.transforms import blended_transform_factory

    sizes = results["sizes"]
    labels = [c["label"] for c in results["cases"] if c["key"] != "bare"]
    keys = [c["key"] for c in results["cases"] if c["key"] != "bare"]
    by_key = {(row["key"], row["size"]): row for row in rows}
    figures = results["figures"]
    height = 0.8 / len(sizes)
    figure, (speed_axis, p99_axis) = plt.subplots(1, 2, figsize=(13, 0.42 * len(keys) + 2.2), sharey=True)
    for s, size in enumerate(sizes):
        for i, key in enumerate(keys):
            row = by_key[(key, size)]
            y = i - 0.4 + height * (s + 0.5)
            color = {True: "#2e7d32", False: "#c62828", None: "#9e9e9e"}[row["met"]]
            style = {"color": color, "height": height * 0.9, "alpha": 1 if s == 0 else 0.55,
                     "hatch": "" if s == 0 else "//", "edgecolor": "white"}
            if row["rps"]:
                speed_axis.barh(y, row["x_bare"], **style)
                p99_axis.barh(y, row["p99_ms"], **style)
            else:
                alone = figures[str(size)][key]["alone_ms"]
                p99_axis.text(0.01, y, f"{size_name(size)}: most runs finished none in {results['duration']} s; "
                              f"one alone took {milliseconds(alone)}", va="center", fontsize=7, color=color,
                              transform=blended_transform_factory(p99_axis.transAxes, p99_axis.transData))
            for axis, value in goal_ticks(key, size, sizes[0], results, figures):
                (speed_axis if axis == "speed" else p99_axis).plot(
                    value, y, marker="|", markersize=12, mew=2.5, color="black" if s == 0 else "#555555")
    for axis, ticks in ((speed_axis, [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1]),
                        (p99_axis, [1, 3, 10, 30, 100, 300, 1000, 3000, 10000])):
        axis.set_xscale("log")
        low, high = axis.get_xlim()
        shown = [tick for tick in ticks if low <= tick <= max(high, 1)]
        axis.set_xticks(shown, [f"{tick:g}" for tick in shown])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(axis="x", which="major", alpha=0.4)
    speed_axis.set_xlim(right=1.3)
    speed_axis.set_yticks(range(len(keys)), labels, fontsize=8)
    speed_axis.invert_yaxis()
    speed_axis.set_xlabel("req/s as a fraction of bare Flask's (log scale; 1 = as fast as bare Flask)")
    p99_axis.set_xlabel("p99 latency, ms (log scale)")
    handles = [Patch(color="#2e7d32", label="goal met"), Patch(color="#c62828", label="goal missed"),
               Patch(color="#9e9e9e", label="baseline / reference"),
               *[Patch(facecolor="#777777", alpha=1 if s == 0 else 0.55, hatch="" if s == 0 else "//",
                       edgecolor="white", label=f"{size_name(size)} engines") for s, size in enumerate(sizes)],
               plt.Line2D([], [], color="black", marker="|", linestyle="", markersize=12, mew=2.5,
                          label=f"goal (at {size_name(sizes[0])}; at larger sizes: {GROWTH:g}x growth limit)")]
    figure.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles))
    machine_line = results["machine"]["description"].split(", Python")[0]
    runs = f"{results['runs']} run{'s' if results['runs'] > 1 else ''}"
    figure.suptitle(f"Engines (engines.py of {results['machine']['engines_commit']}), {results['machine']['date']}: "
                    f"medians of {runs} of {results['duration']} s, wrk -t2 -c10\n"
                    f"{machine_line} (shared with other work: noisy)", fontsize=10)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def goal_ticks(key: str, size: int, first: int, results: dict, figures: dict) -> list[tuple[str, float]]:
    """Where a case's goals fall on the chart's two axes, at one size."""
    def x_bare(case_key: str, at: int) -> float | None:
        bare = figures[str(at)]["bare"]["rps"]
        rps = figures[str(at)][case_key]["rps"]
        return rps / bare if bare and rps is not None else None

    checks = next(c["checks"] for c in results["cases"] if c["key"] == key)
    if not checks:
        return []
    if size != first:
        ticks = []
        if (then := x_bare(key, first)) is not None:
            ticks.append(("speed", then / GROWTH))
        if (p99 := figures[str(first)][key]["p99_ms"]) is not None:
            ticks.append(("p99", p99 * GROWTH))
        return ticks
    ticks = []
    for check in checks:
        if check[0] == "ratio" and (base := x_bare(check[1], size)):
            ticks.append(("speed", check[2] * base))
        elif check[0] == "p99":
            ticks.append(("p99", check[1]))
    return ticks


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="engines in the database, comma-separated; the first is where the goals "
                                        "are judged, the others by growth (default 100000,1000000)")
    parser.add_argument("--runs", type=int, help="runs of each case, the median reported (default 3)")
    parser.add_argument("--duration", type=int, help="seconds of wrk per case and run (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="10,000 engines, 1 run of 1 s per case: every case, quickly (the tests run this)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench",
                        help="cached databases and the working copies (default build/bench)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results",
                        help="where latest.md, latest.json and latest.png go (default bench/results)")
    parser.add_argument("--postgresql", action="store_true",
                        help="also measure Engines' requests on PostgreSQL at the first size (a throwaway cluster; "
                             "Debian's postgresql): a table of its own, latest-postgresql.md")
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: judge the figures of --results/latest.json again and rewrite "
                             "its table and chart (after changing how they are shown)")
    args = parser.parse_args(argv)
    quick = {"sizes": "10000", "runs": 1, "duration": 1}
    full = {"sizes": "100000,1000000", "runs": 3, "duration": 5}
    for name, default in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.sizes = [int(size.replace("_", "")) for size in args.sizes.split(",")]
    args.build_dir, args.results = args.build_dir.resolve(), args.results.resolve()  # SQLite URIs need absolute paths
    return args


def main(argv=None) -> int:
    import importlib.util

    args = parse_args(argv)
    if args.redraw:
        return redraw(args.results)
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (Debian package wrk; bench/run installs it when run as root)")
    if importlib.util.find_spec("datasette") is None:
        sys.exit("bench: datasette is not installed in this Python (requirements-dev.txt; bench/run installs it)")
    about = machine()
    print(f"{about['description']}\nengines.py of commit {about['engines_commit']}", flush=True)
    databases = {size: seeded_database(size, args.build_dir) for size in args.sizes}
    work = args.build_dir / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bare = start_bare_flask(work)
    figures, rss, transfers, postgresql = {}, {}, None, None
    try:
        for size in args.sizes:
            figures[size], rss[size] = measure_size(size, databases[size], bare, args, work)
        if args.postgresql:
            first = args.sizes[0]
            postgresql = measure_postgresql(first, bare, args, work, deep_cursors(databases[first], first))
    finally:
        bare.stop()
    transfers = measure_transfers(args.sizes[0], databases[args.sizes[0]], args.runs, work)
    cases = request_cases(deep_cursors(databases[args.sizes[0]], args.sizes[0]))
    rows = table_rows(cases, args.sizes, figures, transfers, rss)
    results = {
        "machine": about, "settings": settings_text(args), "sizes": args.sizes, "runs": args.runs,
        "duration": args.duration,
        "cases": [{"key": c.key, "label": c.label, "server": c.server, "path": c.path, "mode": c.mode,
                   "checks": c.checks} for c in cases],
        "figures": {str(size): by_case for size, by_case in figures.items()},
        "transfers": transfers, "rss": {str(size): value for size, value in rss.items()},
    }
    write_results(results, rows, args.results)
    print_results(results, rows, args.results)
    if postgresql is not None:
        table = postgresql_table(cases, postgresql, args.sizes[0])
        (args.results / "latest-postgresql.md").write_text(
            f"# Engines on PostgreSQL, {about['description']}\n\n{table}", encoding="utf-8")
        print(table)
    return 0


def print_results(results: dict, rows: list[dict], folder: Path) -> None:
    about = results["machine"]
    print(f"\n{about['description']}, {about['date']}\nengines.py of commit {about['engines_commit']}\n")
    print(text_table(rows))
    print(f"\n{results['settings']}\nwritten to {folder}/latest.md, latest.json and latest.png")


def redraw(folder: Path) -> int:
    """Judge a finished run's figures again, and rewrite its table and chart."""
    results = json.loads((folder / "latest.json").read_text())
    del results["table"]
    cases = [Case(**{**case, "checks": [tuple(check) for check in case["checks"]]}) for case in results["cases"]]
    figures = {int(size): by_case for size, by_case in results["figures"].items()}
    rss = {int(size): value for size, value in results["rss"].items()}
    rows = table_rows(cases, results["sizes"], figures, results["transfers"], rss)
    write_results(results, rows, folder)
    print_results(results, rows, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
