"""The speed bench cannot rot: its quick version runs here, against real
servers, through every case. Speed goals are not asserted (machines are
noisy); that every case ran, answered and was written down is."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from bench import speed
from conftest import PG_BIN, ROOT, add_engines, need

EVERY_CASE = [
    "bare", "datasette", "datasette-search", "first-page", "html",
    "search-9999", "search-engine", "search-9", "search-99", "search-x",
    "first-page-unkept", "html-unkept", "search-9999-unkept", "search-x-unkept",
    "sort-id-deep", "sort-id-desc", "sort-id-desc-deep",
    "sort-title", "sort-title-deep", "sort-title-desc", "sort-title-desc-deep",
    "sort-thrust", "sort-thrust-deep", "sort-thrust-desc", "sort-thrust-desc-deep",
    "get-one", "patch-no-history", "patch",
]


def need_wrk_and_datasette() -> None:
    need(shutil.which("wrk") is not None, "wrk is not installed (Debian package wrk)")
    need(importlib.util.find_spec("datasette") is not None, "datasette is not installed (requirements-dev.txt)")


def test_quick_bench_measures_every_case_against_real_servers(tmp_path):
    need_wrk_and_datasette()
    need(PG_BIN is not None, "PostgreSQL is not installed (Debian package postgresql)")
    results_dir = tmp_path / "results"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--quick", "--postgresql",
                           "--build-dir", str(tmp_path / "build"), "--results", str(results_dir)],
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((results_dir / "latest.json").read_text())
    assert results["sizes"] == [10_000]
    assert [case["key"] for case in results["cases"]] == EVERY_CASE
    figures = results["figures"]["10000"]
    for key in EVERY_CASE:
        case = figures[key]
        assert case["rps"] > 0, key
        assert case["errors"] == 0, (key, case["runs"])
        assert 0 < case["p50_ms"] <= case["p99_ms"], key

    transfers = results["transfers"]
    for name in ("import", "import_wall", "raw_import", "export", "export_wall", "raw_export"):
        assert transfers[name] > 0, name
    assert transfers["same_csv_as_raw"], "the raw export must write what Engines' export writes"
    assert results["rss"]["10000"]["right_after"] > 10e6 and results["rss"]["10000"]["at_rest"] > 10e6

    rows = {(row["key"], row["size"]) for row in results["table"]}
    assert rows == {(key, 10_000) for key in [*EVERY_CASE, "import", "export", "rss"]}
    goals = {row["key"]: row for row in results["table"]}
    assert all(goals[key]["met"] in (True, False) for key in ("first-page", "search-9999", "patch", "import", "rss"))
    # PATCH is judged against the same PATCH on Engines that writes no history record, measured in the run.
    assert "x PATCH without history" in goals["patch"]["measured"]
    assert goals["patch-no-history"]["goal"] == "baseline"

    table = (results_dir / "latest.md").read_text()
    assert "| case | engines | req/s | p50 | p99 | errors | x bare | goal | met | measured |" in table
    for case in results["cases"]:
        assert case["label"] in table and case["label"] in done.stdout
    assert results["machine"]["description"] in table
    assert (results_dir / "latest.png").read_bytes().startswith(b"\x89PNG")

    on_postgresql = (results_dir / "latest-postgresql.md").read_text()
    for case in results["cases"]:
        if case["server"] in ("engines", "bare"):
            row = next(line for line in on_postgresql.splitlines() if line.startswith(f"| {case['label']} |"))
            assert float(row.split("|")[2].replace(",", "")) > 0, row

    (results_dir / "latest.md").unlink()
    redrawn = subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--redraw", "--results",
                              str(results_dir)], capture_output=True, text=True, timeout=120)
    assert redrawn.returncode == 0, redrawn.stderr[-3000:]
    assert (results_dir / "latest.md").read_text() == table
    assert json.loads((results_dir / "latest.json").read_text()) == results


def test_bench_run_sets_up_then_passes_its_arguments_on(tmp_path):
    need_wrk_and_datasette()
    done = subprocess.run([str(ROOT / "bench" / "run"), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--quick" in done.stdout and "--sizes" in done.stdout


@pytest.mark.parametrize("sort", ["id", "-id", "title", "-title", "thrust", "-thrust"])
def test_deep_page_cursors_start_nine_tenths_down_the_list(app, client, sort):
    titles = ["delta", "Alpha", "charlie", "Bravo", "echo"]
    add_engines(app, [{"title": f"{titles[i % 5]} {i % 7}", "thrust": (i * 37) % 11} for i in range(100)])
    database = app.instance_path + "/engines.sqlite3"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cursor = speed.deep_cursors(Path(database), 100)[sort]

    whole_list = client.get(f"/api/engines?sort={sort}&per_page=100").get_json()["engines"]
    deep_page = client.get(f"/api/engines?sort={sort}&after={cursor}").get_json()["engines"]
    assert [engine["id"] for engine in deep_page] == [engine["id"] for engine in whole_list[91:]]
