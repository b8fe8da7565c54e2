"""Export every engine as CSV or JSON, and import such a file: all of it, or
none of it."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tracemalloc

import pytest

import engines
from conftest import ROOT, add_engines, all_engines, csrf_token

TRICKY_TITLES = ["Main", 'Quote "this", comma', "Ракета-носитель", "火箭发动机", "=SUM(A1:A9)", "<b>x</b>",
                 r"back\slash", "🚀 booster", "x" * 128, "  tab-free  spaces  "]


def upload(client, content: bytes, filename: str = "engines.csv", **kwargs):
    """Import a file from the page, as a browser posts the form."""
    return client.post("/import", data={"csrf_token": csrf_token(client), "file": (io.BytesIO(content), filename)},
                       content_type="multipart/form-data", **kwargs)


def rejected(client, response) -> str:
    """The page a refused import leads to (Post/Redirect/Get: a reload posts
    nothing again), checking that its problems are at the top, under the
    message, before the list."""
    assert response.status_code == 302 and response.headers["Location"] == "/"
    page = client.get("/").get_data(as_text=True)
    message = page.index('<p class="message error">Nothing was imported from')
    assert message < page.index('class="message error problems"') < page.index('id="engines"')
    assert "message error problems" not in client.get("/").get_data(as_text=True)  # shown once
    return page


def every_engine(client) -> list[dict]:
    return client.get("/api/engines?per_page=500").get_json()["engines"]


@pytest.fixture
def source(client):
    """Engines with a history: gaps left by deleted ones, and versions above 1."""
    for number, title in enumerate(TRICKY_TITLES):
        assert client.post("/api/engines", json={"title": title, "thrust": number * 1000}).status_code == 201
    client.delete("/api/engines/2")
    client.delete("/api/engines/7")
    client.patch("/api/engines/3", json={"thrust": 5})
    client.patch("/api/engines/3", json={"title": "Ракета-носитель 2"})
    return every_engine(client)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_an_export_imported_into_an_empty_engines_gives_the_same_engines(client, source, tmp_path, fmt):
    exported = client.get(f"/api/engines.{fmt}").get_data()
    empty = engines.create_app({"TESTING": True}, instance_path=tmp_path / "empty").test_client()
    response = upload(empty, exported, f"engines.{fmt}", follow_redirects=True)
    assert response.status_code == 200
    assert f"Imported 8 engines from “engines.{fmt}”." in response.get_data(as_text=True)
    assert every_engine(empty) == source
    assert empty.post("/api/engines", json={"title": "Next"}).get_json()["id"] == 11


@pytest.mark.parametrize("fmt, mimetype", [("csv", "text/csv"), ("json", "application/json")])
def test_the_export_is_a_streamed_download(client, source, fmt, mimetype):
    response = client.get(f"/api/engines.{fmt}")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == mimetype
    assert re.fullmatch(rf'attachment; filename="engines-\d{{8}}T\d{{6}}Z\.{fmt}"',
                        response.headers["Content-Disposition"])


def test_the_csv_export_has_a_header_and_one_engine_a_line(client, source):
    text = client.get("/api/engines.csv").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert text.splitlines()[0] == "id,title,thrust,version,updated_at"
    assert len(text.splitlines()) == 1 + len(source)
    assert [{**row, "id": int(row["id"]), "thrust": int(row["thrust"]), "version": int(row["version"])}
            for row in rows] == source


def test_the_json_export_has_one_engine_a_line(client, source):
    text = client.get("/api/engines.json").get_data(as_text=True)
    assert json.loads(text) == {"engines": source}
    lines = text.splitlines()
    assert lines[0] == '{"engines": [' and lines[-1] == "]}"
    assert [json.loads(line.rstrip(",")) for line in lines[1:-1]] == source


def test_the_page_links_to_both_exports(client):
    page = client.get("/").get_data(as_text=True)
    assert 'href="/api/engines.csv"' in page and 'href="/api/engines.json"' in page


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_and_import_from_the_command_line(runner, client, source, tmp_path, fmt):
    path = tmp_path / f"engines.{fmt}"
    result = runner.invoke(args=["export", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == client.get(f"/api/engines.{fmt}").get_data()
    to_stdout = runner.invoke(args=["export", "--format", fmt])
    assert to_stdout.stdout_bytes == path.read_bytes()

    target = engines.create_app({"TESTING": True}, instance_path=tmp_path / "target")
    result = target.test_cli_runner().invoke(args=["import", str(path)])
    assert result.exit_code == 0, result.output
    assert f"Importing engines.{fmt}" in result.output
    assert result.output.endswith("Imported 8 engines.\n")
    assert every_engine(target.test_client()) == source


def ten_thousand_rows_with_one_bad(fmt: str, bad_index: int) -> bytes:
    rows = [{"title": f"Engine {i}", "thrust": i} for i in range(10_000)]
    rows[bad_index]["thrust"] = -5
    if fmt == "json":
        return ('{"engines": [\n' + ",\n".join(json.dumps(row) for row in rows) + "\n]}\n").encode()
    return ("title,thrust\n" + "".join(f"{row['title']},{row['thrust']}\n" for row in rows)).encode()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_an_import_with_one_bad_row_in_10000_writes_nothing_and_names_its_line(client, app, runner, tmp_path, fmt):
    add_engines(app, [{"title": "Already here", "thrust": 1}])
    content = ten_thousand_rows_with_one_bad(fmt, bad_index=7776)  # the 7,778th line: after the header
    problem = "Line 7778, thrust: Thrust must be between 0 and 2,147,483,647."

    response = upload(client, content, f"engines.{fmt}")
    page = rejected(client, response)
    assert "Nothing was imported: 1 row has a problem:" in page
    assert problem in page
    assert all_engines(app) == [(1, "Already here", 1)]

    path = tmp_path / f"engines.{fmt}"
    path.write_bytes(content)
    result = runner.invoke(args=["import", str(path)])
    assert result.exit_code == 1
    assert f"Error: Nothing was imported: 1 row has a problem:\n{problem}\n" in result.output
    assert all_engines(app) == [(1, "Already here", 1)]


def test_the_first_ten_problems_are_listed_with_how_many_rows_have_them(client, app):
    lines = ["title,thrust"] + [f"Engine {i},{'lots' if i % 3 == 0 else i}" for i in range(60)]
    page = rejected(client, upload(client, "\n".join(lines).encode()))
    assert "Nothing was imported: 20 rows have problems; the first 10:" in page
    listed = re.findall(r"<li>(Line \d+, thrust: [^<]*)</li>", page)
    assert listed == [f"Line {i + 2}, thrust: Thrust must be a whole number." for i in range(0, 30, 3)]
    assert all_engines(app) == []


def peak_memory_of_refused_import(app, path) -> tuple[int, engines.ImportRejected]:
    """The most memory (bytes, traced) an import of the file at `path` took
    before it was refused, and the refusal."""
    with app.app_context(), path.open("rb") as file:
        tracemalloc.start()
        try:
            with pytest.raises(engines.ImportRejected) as refused:
                engines.import_engines(file)
            return tracemalloc.get_traced_memory()[1], refused.value
        finally:
            tracemalloc.stop()
            engines.db.session.remove()


def test_the_memory_an_import_takes_does_not_grow_with_its_bad_rows(app, tmp_path):
    peaks = {}
    for count in (1_000, 100_000):
        path = tmp_path / f"{count}.csv"
        path.write_text("title,thrust\n" + "Engine,lots\n" * count)
        peaks[count], refused = peak_memory_of_refused_import(app, path)
        assert refused.summary == f"Nothing was imported: {count:,} rows have problems; the first 10:"
        assert refused.errors == [f"Line {line}, thrust: Thrust must be a whole number." for line in range(2, 12)]
    # Keeping every message took 11 MB for 100,000 bad rows (2 GB for 16 million).
    assert peaks[100_000] < peaks[1_000] + 256 * 1024, peaks
    assert all_engines(app) == []


@pytest.mark.parametrize("content, problem", [
    (b"id,title\n1,Again\n", "Line 2, id: engine 1 already exists."),
    (b"id,title\n5,A\n6,B\n5,C\n", "Line 4, id: 5 is also the id on line 2."),
    (b"id,title\n5,A\n,B\n", "Line 3, id: give every engine an id, or none; the first one has one."),
    (b'{"engines": [\n{"title": "A"},\n{"id": 9, "title": "B"}\n]}', "Line 3, id: give every engine an id, or none"),
    (b"id,title\n0,Zero\n", "Line 2, id: Id must be a whole number from 1 to 2,147,483,647."),
    (b"title,version\nA,0\n", "Line 2, version: Version must be a whole number from 1 up"),
    (b"title,updated_at\nA,yesterday\n", "Line 2, updated_at: updated_at must be an ISO 8601 date and time"),
    (b"title,updated_at\nA,2026-11-26T10:15:00\n", "Line 2, updated_at: updated_at must give its time zone"),
    (b"title,thrust\n,5\n", "Line 2, title: Title is required."),
    (b"title\nA\x00B\n", "Line 2, title: Title must not contain control characters."),
    (b'{"engines": [\n{"title": "A", "colour": "red"}\n]}', "Line 2, colour: Unknown field."),
    (b'{"engines": [\n["A", 1]\n]}', "Line 2: Each engine must be a JSON object"),
    (b'{"engines": [\n{"title": "A"},\n{"title": "B", "\\ud800": 1}\n]}', "Line 3, \\ud800: Unknown field."),
    (b'{"engines": [\n{"title": "A", "\\u001b[2J": 1}\n]}', "Line 2, \\x1b[2J: Unknown field."),
    (b'{"engines": [\n{"title": "\\ud800"}\n]}', "Line 2, title: Title must not contain control characters."),
    (b'{"engines": [\n{"title": "A", "thrust": ' + b"[" * 50 + b"]" * 50 + b"}\n]}",
     "Line 2, thrust: Thrust must be a whole number."),
])
def test_rows_that_break_a_rule_refuse_the_file_naming_line_and_reason(client, app, content, problem):
    add_engines(app, [{"title": "First", "thrust": 0}])
    response = upload(client, content)
    assert problem in rejected(client, response)
    assert all_engines(app) == [(1, "First", 0)]


@pytest.mark.parametrize("content, problem", [
    (b"", "Line 1: the file is empty"),
    (b"name,thrust\nMain,1\n", "Line 1: unknown column “name”"),
    (b"thrust\n1\n", "Line 1: give each column once, title included"),
    (b"title,title\nA,B\n", "Line 1: give each column once, title included"),
    (b"title,thrust\nA,1\nB,2,3\n", "Line 3: 3 cells, but line 1 names 2 columns."),
    (b"title,thrust\nA,1\nB\xff,2\n", "Line 3: this is not UTF-8 text."),
    (b'title\n"an open quote\nnever closed\n', "Line 3: unexpected end of data."),
    (b'{"engines": [\n{"title": "A"},\n{"title": \n]}', "Line 4: this is not valid JSON: Expecting value."),
    (b'{"engines": [\n{"title": "A"},\n]}', "Line 3: this is not valid JSON"),
    (b'{"engines": [\n{"title": "A"}\n]}\n{"more": 1}', "Line 3: the file must end with “]}” after the engines."),
    (b'[{"title": "A"}]', 'Line 1: a JSON import is shaped as Engines exports it'),
    (b'{"items": []}', 'Line 1: a JSON import is shaped as Engines exports it'),
    (b'{"engines": [\n{"title": "A"},\n' + b"[" * 5000 + b"]}", "Line 3: this engine is nested too deeply"),
    (b'{"engines": [\n{"title": ' + b'{"a": ' * 3000 + b"]}", "Line 2: this engine is nested too deeply"),
    (b'{"engines": [\n{"title": "A", "thrust": 1' + b"0" * 5000 + b"}\n]}",
     "Line 2: a number in this engine has far too many digits."),
    (b"title,\x01\xe2\x80\xae" + b"c" * 500 + b"\nA,1\n", "Line 1: unknown column “\\x01\\u202e" + "c" * 62 + "…”"),
])
def test_a_file_that_is_not_an_export_is_refused_saying_where(client, app, content, problem):
    response = upload(client, content)
    page = rejected(client, response)
    assert "Nothing was imported: the file is not an export Engines can read." in page
    assert problem in page
    assert all_engines(app) == []


@pytest.mark.parametrize("content, problem", [
    (b'{"engines": [\n{"title": "A", "\\ud800": 1}\n]}', "Line 2, \\ud800: Unknown field."),
    (b'{"engines": [\n' + b"[" * 5000 + b"]}", "Line 2: this engine is nested too deeply"),
])
def test_the_import_command_tells_a_hostile_file_in_a_message_never_a_traceback(tmp_path, content, problem):
    path = tmp_path / os.fsdecode(b"engines-\xff\x1b[2J.json")  # not UTF-8, and a terminal escape
    path.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "engines", "import", str(path)], cwd=ROOT,
                            capture_output=True, timeout=60,
                            env={"ENGINES_INSTANCE": str(tmp_path / "i"), "PATH": "/usr/bin:/bin"})
    stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert result.returncode == 1
    assert stderr.startswith("Error: Nothing was imported")
    assert problem in stderr
    assert "Traceback" not in stderr
    assert "\x1b" not in stdout + stderr


def test_a_spreadsheet_csv_without_ids_adds_engines_with_new_ids(client, app):
    add_engines(app, [{"title": "First", "thrust": 0}])
    content = "\ufefftitle,thrust\r\nMain,1500\r\n\r\nVernier,\r\n".encode()  # a BOM and CRLFs, as Excel writes
    response = upload(client, content, "From Excel.csv", follow_redirects=True)
    assert "Imported 2 engines from “From Excel.csv”." in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "First", 0), (2, "Main", 1500), (3, "Vernier", 0)]
    added = client.get("/api/engines/2").get_json()
    assert added["version"] == 1


def test_an_empty_export_imports_nothing(client, tmp_path):
    for fmt in ("csv", "json"):
        exported = client.get(f"/api/engines.{fmt}").get_data()
        response = upload(client, exported, f"engines.{fmt}", follow_redirects=True)
        assert f"Imported 0 engines from “engines.{fmt}”." in response.get_data(as_text=True)


def test_an_import_needs_a_file_and_the_page_s_csrf_token(client, app):
    response = client.post("/import", data={"csrf_token": csrf_token(client)}, follow_redirects=True)
    assert "Choose a CSV or JSON file to import." in response.get_data(as_text=True)
    response = client.post("/import", data={"file": (io.BytesIO(b"title\nSneaky\n"), "x.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 400
    assert "reload the page" in response.get_data(as_text=True)
    assert all_engines(app) == []


def test_an_upload_over_the_import_limit_is_413(tmp_path):
    app = engines.create_app({"TESTING": True, "MAX_IMPORT_LENGTH": 4096}, instance_path=tmp_path / "i")
    client = app.test_client()
    response = upload(client, b"title\n" + b"Engine\n" * 1000)
    assert response.status_code == 413
    assert "The body is too large: the limit is 4 KiB." in response.get_data(as_text=True)
    assert all_engines(app) == []
    # Far above the 64 KiB of a JSON body, under the import limit: fine.
    client = engines.create_app({"TESTING": True}, instance_path=tmp_path / "j").test_client()
    response = upload(client, b"title\n" + b"Engine with a longer title\n" * 10_000, follow_redirects=True)
    assert "Imported 10,000 engines" in response.get_data(as_text=True)


def test_an_import_of_100000_engines_finishes_and_the_export_streams_in_little_memory(app, runner, client,
                                                                                      tmp_path):
    path = tmp_path / "big.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "thrust"])
        writer.writerows((f"Ракета {i:06d}", i) for i in range(100_000))
    result = runner.invoke(args=["import", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("Imported 100,000 engines.\n")
    with app.app_context():
        assert engines.db.session.scalar(engines.select(engines.func.count(engines.Engine.id))) == 100_000

    response = client.get("/api/engines.csv")
    assert response.is_streamed
    tracemalloc.start()
    try:
        size = lines = 0
        for chunk in response.iter_encoded():
            size += len(chunk)
            lines += chunk.count(b"\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        response.close()
    assert lines == 1 + 100_000
    # The whole export never sits in memory, only a batch of engines does
    # (JSON reads them the same way; tracing it too would double the time).
    assert peak < size / 4, (peak, size)
    response = client.get("/api/engines.json")
    assert response.is_streamed
    assert sum(chunk.count(b"\n") for chunk in response.iter_encoded()) == 2 + 100_000
    response.close()


def test_imported_engines_are_shown_where_they_land_highlighted(client, app):
    add_engines(app, [{"title": f"Engine {i}", "thrust": i} for i in range(1, 61)])
    response = upload(client, b"title,thrust\nNew one,1\nNew two,\"2,000\"\n")
    after = engines.encode_cursor(engines.SimpleNamespace(id=60), "id")
    assert response.headers["Location"] == f"/?after={after}&from=61&new=61-62#engine-61"
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert '<h2 id="list-heading">61–62 of 62 engines</h2>' in page
    assert re.findall(r'<tr id="engine-(\d+)" class="new">', page) == ["61", "62"]
    assert "Imported 2 engines from “engines.csv”." in page
