"""Every change kept: the history of each engine, revert, restore, undo, the
Recently deleted list, the History page and its chart, the commands and
retention."""

from __future__ import annotations

import getpass
import io
import re
import shutil
import sqlite3
import subprocess
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import event, select
from sqlalchemy.engine import Engine as SqlEngine

import engines
from conftest import LiveServer, all_engines, csrf_token, need


def post(client, body):
    return client.post("/api/engines", json=body)


def history(client, engine_id: int) -> list[tuple]:
    """(version, change, source, title, thrust) of an engine's whole history, newest first."""
    shown, url = [], f"/api/engines/{engine_id}/history?per_page=500"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.get_data(as_text=True)
        shown += page.get_json()["history"]
        url = page.get_json()["next"]
    return [(h["version"], h["change"], h["source"], h["title"], h["thrust"]) for h in shown]


def history_rows(app) -> list[tuple]:
    """Every history record, read straight from the database."""
    with app.app_context():
        rows = engines.db.session.execute(select(engines.engine_history).order_by(engines.engine_history.c.id)).all()
        engines.db.session.remove()
        return [tuple(row) for row in rows]


def form_post(client, url, data, **kwargs):
    return client.post(url, data={"csrf_token": csrf_token(client), **data}, **kwargs)


def undo_button(page: str) -> str:
    """The change the flash message's Undo button takes back."""
    return re.search(r'<form method="post" action="/undo" class="undo">.*?name="change" value="(\d+)"', page,
                     re.S).group(1)


def database(app) -> Path:
    return Path(app.instance_path) / "engines.sqlite3"


# -- every change is kept ------------------------------------------------------------------------

def test_every_change_through_the_api_is_one_record_of_the_engine_as_the_change_left_it(client):
    before = datetime.now(UTC)
    post(client, {"title": "Main", "thrust": 10})
    client.patch("/api/engines/1", json={"thrust": 20})
    client.patch("/api/engines/1", json={"title": "Main stage"})
    assert client.delete("/api/engines/1").status_code == 204
    assert client.post("/api/deleted/1/restore").status_code == 201
    assert client.post("/api/engines/1/revert", json={"version": 1}).status_code == 200
    assert history(client, 1) == [
        (6, "revert", "api", "Main", 10), (5, "restore", "api", "Main stage", 20),
        (4, "delete", "api", "Main stage", 20), (3, "update", "api", "Main stage", 20),
        (2, "update", "api", "Main", 20), (1, "create", "api", "Main", 10)]
    records = client.get("/api/engines/1/history").get_json()["history"]
    assert set(records[0]) == {"version", "title", "thrust", "changed_at", "change", "source", "changed_by"}
    times = [datetime.fromisoformat(record["changed_at"]) for record in records]
    assert all(moment.utcoffset() == timedelta(0) for moment in times)
    assert times == sorted(times, reverse=True) and before <= times[-1] <= times[0] <= datetime.now(UTC)
    engine = client.get("/api/engines/1").get_json()
    assert (records[0]["version"], records[0]["changed_at"]) == (engine["version"], engine["updated_at"])


def test_a_change_that_changes_nothing_or_is_refused_writes_no_record(client, app):
    post(client, {"title": "Main", "thrust": 10})
    client.patch("/api/engines/1", json={"thrust": 20})
    kept = history_rows(app)
    refused = [
        client.patch("/api/engines/1", json={"thrust": -1}),  # validation
        client.patch("/api/engines/1", json={"thrust": 5}, headers={"If-Match": '"1"'}),  # stale
        client.delete("/api/engines/1", headers={"If-Match": '"1"'}),
        client.post("/api/engines/1/revert", json={"version": 1}, headers={"If-Match": '"1"'}),
        client.post("/api/engines/1/revert", json={"version": 9}),
        client.post("/api/engines", json={"title": ""}),
        client.post("/api/deleted/1/restore"),
        form_post(client, "/engines/1/thrust", {"thrust": "lots"}),
        form_post(client, "/engines/1/edit", {"title": "Main", "thrust": "30", "version": "1"}),
    ]
    assert [response.status_code for response in refused] == [400, 409, 409, 409, 404, 400, 404, 302, 409]
    assert client.patch("/api/engines/1", json={"thrust": 20}).get_json()["version"] == 2  # the same values
    assert history_rows(app) == kept
    assert all_engines(app) == [(1, "Main", 20)]


def test_the_history_of_a_deleted_engine_is_kept_and_only_an_id_never_used_is_404(client):
    post(client, {"title": "Main", "thrust": 10})
    client.delete("/api/engines/1")
    assert client.get("/api/engines/1").status_code == 404
    deleted = client.get("/api/engines/1/history")
    assert deleted.status_code == 200 and deleted.headers["ETag"] == '"2"'
    assert [h["change"] for h in deleted.get_json()["history"]] == ["delete", "create"]
    never = client.get("/api/engines/2/history")
    assert never.status_code == 404 and never.get_json() == {"error": "Engine 2 was not found."}
    assert client.get("/api/engines/99999999999/history").status_code == 404


def test_history_comes_in_keyset_pages_and_its_etag_is_the_engine_s_version(client):
    post(client, {"title": "Main", "thrust": 0})
    for thrust in range(1, 7):
        client.patch("/api/engines/1", json={"thrust": thrust})
    first = client.get("/api/engines/1/history?per_page=3")
    assert first.headers["ETag"] == '"7"'
    assert [h["version"] for h in first.get_json()["history"]] == [7, 6, 5]
    following = first.get_json()["next"]
    assert following.startswith("http://localhost/api/engines/1/history?") and "per_page=3" in following
    client.patch("/api/engines/1", json={"thrust": 99})  # a change meanwhile does not shift the pages
    assert [h["version"] for h in client.get(following).get_json()["history"]] == [4, 3, 2]
    assert [version for version, *_ in history(client, 1)] == [8, 7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("query, field", [
    ("per_page=0", "per_page"), ("after=!!!", "after"), ("sort=title", "sort"), ("q=x", "q"), ("colour=red", "colour"),
])
def test_a_bad_history_or_deleted_list_parameter_is_a_400_naming_it(client, query, field):
    post(client, {"title": "Main"})
    for url in ("/api/engines/1/history", "/api/deleted"):
        response = client.get(f"{url}?{query}")
        assert response.status_code == 400 and field in response.get_json()["fields"]
    assert client.get(f"/engines/1/history?{query}").status_code == 400


# -- revert --------------------------------------------------------------------------------------

def test_revert_sets_the_engine_back_to_a_version_as_a_new_version_honouring_if_match(client):
    post(client, {"title": "Main", "thrust": 10})
    client.patch("/api/engines/1", json={"title": "Renamed", "thrust": 20})
    reverted = client.post("/api/engines/1/revert", json={"version": 1}, headers={"If-Match": '"2"'})
    assert reverted.status_code == 200 and reverted.headers["ETag"] == '"3"'
    assert {k: reverted.get_json()[k] for k in ("title", "thrust", "version")} == \
        {"title": "Main", "thrust": 10, "version": 3}
    again = client.post("/api/engines/1/revert", json={"version": 1})  # already so: still a new version
    assert again.get_json()["version"] == 4
    stale = client.post("/api/engines/1/revert", json={"version": 2}, headers={"If-Match": '"3"'})
    assert stale.status_code == 409 and stale.get_json()["engine"]["version"] == 4
    unknown = client.post("/api/engines/1/revert", json={"version": 99})
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "Engine 1 has no version 99 in its history."


@pytest.mark.parametrize("body, field", [
    ({}, "version"), ({"version": "2"}, "version"), ({"version": 1.5}, "version"), ({"version": True}, "version"),
    ({"version": 0}, "version"), ({"version": 2**31}, "version"), ({"version": None}, "version"),
    ({"version": 1, "thrust": 5}, "thrust"),
])
def test_a_revert_to_a_version_that_is_not_a_whole_number_is_a_400_naming_it(client, app, body, field):
    post(client, {"title": "Main"})
    response = client.post("/api/engines/1/revert", json=body)
    assert response.status_code == 400 and field in response.get_json()["fields"]
    assert len(history_rows(app)) == 1


def test_a_revert_of_a_deleted_engine_is_a_409_and_of_an_unknown_one_a_404(client):
    post(client, {"title": "Main"})
    client.delete("/api/engines/1")
    deleted = client.post("/api/engines/1/revert", json={"version": 1})
    assert deleted.status_code == 409 and "is deleted: restore it first" in deleted.get_json()["error"]
    assert client.post("/api/engines/7/revert", json={"version": 1}).status_code == 404
    assert client.post("/api/engines/7/revert", data="x", content_type="text/plain").status_code == 415


# -- deleted engines and restore -------------------------------------------------------------------

def test_the_deleted_engines_are_listed_most_recently_deleted_first_with_when_and_by_whom(client):
    for title in ("A", "B", "C", "D"):
        post(client, {"title": title, "thrust": 1})
    for engine_id in (2, 1, 4):
        client.delete(f"/api/engines/{engine_id}")
    client.post("/api/deleted/1/restore")
    body = client.get("/api/deleted").get_json()
    assert [(e["id"], e["title"], e["version"]) for e in body["engines"]] == [(4, "D", 2), (2, "B", 2)]
    assert body["next"] is None
    assert body["engines"][0]["deleted_by"] == engines.os_user()
    assert datetime.fromisoformat(body["engines"][0]["deleted_at"]) > datetime.fromisoformat(
        body["engines"][1]["deleted_at"])
    first = client.get("/api/deleted?per_page=1").get_json()
    assert [e["id"] for e in first["engines"]] == [4]
    assert [e["id"] for e in client.get(first["next"]).get_json()["engines"]] == [2]


def test_restore_brings_an_engine_back_with_its_old_id_title_and_thrust_at_a_new_version(client):
    post(client, {"title": "Main", "thrust": 1500})
    client.patch("/api/engines/1", json={"thrust": 1600})
    client.delete("/api/engines/1")
    restored = client.post("/api/deleted/1/restore", headers={"If-Match": '"3"'})
    assert restored.status_code == 201
    assert restored.headers["Location"] == "/api/engines/1" and restored.headers["ETag"] == '"4"'
    assert {k: restored.get_json()[k] for k in ("id", "title", "thrust", "version")} == \
        {"id": 1, "title": "Main", "thrust": 1600, "version": 4}
    assert client.get("/api/engines?q=main").get_json()["total"] == 1, "searchable and counted again"
    assert client.get("/api/deleted").get_json()["engines"] == []


def test_restore_is_404_unless_the_engine_is_deleted_and_409_for_another_delete_s_version(client):
    post(client, {"title": "Main"})
    assert client.post("/api/deleted/1/restore").get_json()["error"] == "Engine 1 is not deleted: it exists."
    assert client.post("/api/deleted/2/restore").get_json()["error"] == \
        "Engine 2 is not deleted: there never was an engine with this id."
    assert client.post("/api/deleted/99999999999/restore").status_code == 404
    client.delete("/api/engines/1")
    stale = client.post("/api/deleted/1/restore", headers={"If-Match": '"7"'})
    assert stale.status_code == 409 and "deleted at version 2, not 7" in stale.get_json()["error"]
    assert client.get("/api/engines/1").status_code == 404


def test_restoring_never_collides_with_an_id_handed_out_since(client):
    for title in ("A", "B", "C"):
        post(client, {"title": title})
    client.delete("/api/engines/3")
    assert post(client, {"title": "D"}).get_json()["id"] == 4, "AUTOINCREMENT never hands out 3 again"
    assert client.post("/api/deleted/3/restore").get_json()["id"] == 3
    assert post(client, {"title": "E"}).get_json()["id"] == 5
    assert [title for _, title, _ in all_engines(client.application)] == ["A", "B", "C", "D", "E"]


# -- undo ------------------------------------------------------------------------------------------

def test_every_change_on_the_page_offers_an_undo_that_takes_back_exactly_that_change(client, app):
    added = form_post(client, "/engines", {"title": "Main", "thrust": "10"}, follow_redirects=True)
    undo_add = undo_button(added.get_data(as_text=True))
    thrust = form_post(client, "/engines/1/thrust", {"thrust": "20"}, follow_redirects=True)
    edited = form_post(client, "/engines/1/edit", {"title": "Renamed", "thrust": "30", "version": "2"},
                       follow_redirects=True)
    assert all_engines(app) == [(1, "Renamed", 30)]

    undone = form_post(client, "/undo", {"change": undo_button(edited.get_data(as_text=True))},
                       follow_redirects=True)
    assert "“Main” is back to thrust 20, as at version 2." in undone.get_data(as_text=True)
    assert all_engines(app) == [(1, "Main", 20)]
    # The undo is a change too, with its own Undo: which redoes.
    form_post(client, "/undo", {"change": undo_button(undone.get_data(as_text=True))})
    assert all_engines(app) == [(1, "Renamed", 30)]

    stale = form_post(client, "/undo", {"change": undo_button(thrust.get_data(as_text=True))})
    assert stale.status_code == 409 and "nothing was undone" in stale.get_data(as_text=True)
    assert all_engines(app) == [(1, "Renamed", 30)]

    deleted = form_post(client, "/engines/1/delete", {}, follow_redirects=True)
    assert all_engines(app) == []
    restored = form_post(client, "/undo", {"change": undo_button(deleted.get_data(as_text=True))},
                         follow_redirects=True)
    assert "Restored “Renamed”." in restored.get_data(as_text=True) and all_engines(app) == [(1, "Renamed", 30)]
    form_post(client, "/undo", {"change": undo_button(restored.get_data(as_text=True))})
    assert all_engines(app) == [] and client.get("/api/deleted").get_json()["engines"][0]["id"] == 1
    assert form_post(client, "/undo", {"change": undo_add}).status_code == 409
    assert [change for _, change, *_ in history(client, 1)] == \
        ["delete", "restore", "delete", "revert", "revert", "update", "update", "create"]
    assert {source for _, _, source, *_ in history(client, 1)} == {"page"}


def test_undo_of_an_add_deletes_the_engine_and_can_itself_be_undone(client, app):
    added = form_post(client, "/engines", {"title": "Oops", "thrust": "1"}, follow_redirects=True)
    undone = form_post(client, "/undo", {"change": undo_button(added.get_data(as_text=True)), "next": "/?sort=-id"})
    assert undone.headers["Location"] == "/?sort=-id"
    assert all_engines(app) == []
    form_post(client, "/undo", {"change": undo_button(client.get("/").get_data(as_text=True))})
    assert all_engines(app) == [(1, "Oops", 1)]


@pytest.mark.parametrize("change", ["", "abc", "0", "-1", "1.5", "99999999999"])
def test_an_undo_of_no_change_we_know_is_a_clear_4xx_changing_nothing(client, app, change):
    form_post(client, "/engines", {"title": "Main"})
    response = form_post(client, "/undo", {"change": change})
    assert response.status_code in (400, 404)
    assert "nothing was undone" in response.get_data(as_text=True) or "<strong>change</strong>" in \
        response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Main", 0)] and len(history_rows(app)) == 1


def test_a_pruned_change_is_not_undone(client, app):
    form_post(client, "/engines", {"title": "Main"})
    response = form_post(client, "/undo", {"change": "2"})
    assert response.status_code == 404 and "not in the history any more" in response.get_data(as_text=True)


# -- the pages ----------------------------------------------------------------------------------

def test_the_history_page_has_a_table_of_versions_and_an_accessible_chart_of_thrust(client):
    post(client, {"title": "Main <b>", "thrust": 1000})
    for thrust in (4000, 2000):
        client.patch("/api/engines/1", json={"thrust": thrust})
    page = client.get("/engines/1/history").get_data(as_text=True)
    svg = re.search(r"<svg class=\"thrust-chart\".*?</svg>", page, re.S).group(0)
    assert 'role="img" aria-labelledby="chart-title chart-desc"' in svg
    assert '<title id="chart-title">Thrust of “Main &lt;b&gt;” over time</title>' in svg
    description = re.search(r'<desc id="chart-desc">(.*?)</desc>', svg).group(1)
    assert description.startswith("3 versions from ")
    assert "thrust from 1,000 to 2,000, highest 4,000, lowest 1,000" in description
    assert len(re.findall(r'<circle class="mark', svg)) == 3
    assert "Time (UTC) from " in svg and ">Thrust</text>" in svg and ">4,000</text>" in svg and ">0</text>" in svg
    rows = re.findall(r'<tr class="change-(\w+)">\s*<td class="num" data-label="Version">(\d+)</td>', page)
    assert rows == [("update", "3"), ("update", "2"), ("create", "1")]
    assert page.count("Revert to this") == 2


def test_a_revert_from_the_history_page_says_so_and_offers_undo(client, app):
    post(client, {"title": "Main", "thrust": 1})
    client.patch("/api/engines/1", json={"thrust": 2})
    reverted = form_post(client, "/engines/1/revert", {"version": "1", "current": "2"}, follow_redirects=True)
    page = reverted.get_data(as_text=True)
    assert "“Main” is back to version 1: thrust 1." in page and undo_button(page)
    assert all_engines(app) == [(1, "Main", 1)]
    stale = form_post(client, "/engines/1/revert", {"version": "1", "current": "2"})
    assert stale.status_code == 409
    bad = form_post(client, "/engines/1/revert", {"version": "first", "current": "3"})
    assert bad.status_code == 400 and "<strong>version</strong>" in bad.get_data(as_text=True)


def test_the_list_draws_each_row_s_sparkline_from_one_query_for_the_whole_page(client, app):
    for i in range(30):
        post(client, {"title": f"Engine {i}", "thrust": i})
    for thrust in (10, 50, 20):
        client.patch("/api/engines/1", json={"thrust": thrust})
    statements = []

    def record(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(SqlEngine, "before_cursor_execute", record)
    try:
        page = client.get("/").get_data(as_text=True)
    finally:
        event.remove(SqlEngine, "before_cursor_execute", record)
    assert len([s for s in statements if "engine_history" in s]) == 1
    assert page.count('<svg class="spark"') == 30
    assert 'aria-label="Thrust over its last 4 versions: from 0 to 20, lowest 0, highest 50"' in page
    assert 'aria-label="Thrust, one version recorded: 7"' in page


def test_the_recently_deleted_page_lists_deleted_engines_and_restores_them(client, app):
    for title in ("Main", "Spare"):
        post(client, {"title": title, "thrust": 5})
    client.delete("/api/engines/2")
    page = client.get("/deleted").get_data(as_text=True)
    assert "Spare" in page and "Main" not in page.split("<main")[1]
    assert 'href="/deleted"' in client.get("/").get_data(as_text=True)
    restored = form_post(client, "/deleted/2/restore", {"version": "2"}, follow_redirects=True)
    assert "Restored “Spare”." in restored.get_data(as_text=True)
    assert "No deleted engines." in restored.get_data(as_text=True)
    assert all_engines(app) == [(1, "Main", 5), (2, "Spare", 5)]


def test_the_history_page_of_a_deleted_engine_offers_restore(client):
    post(client, {"title": "Main"})
    client.delete("/api/engines/1")
    page = client.get("/engines/1/history").get_data(as_text=True)
    assert "This engine was deleted on" in page and 'action="/deleted/1/restore"' in page
    assert "Revert to this" not in page
    assert client.get("/engines/2/history").status_code == 404


# -- another program, straight in the database ------------------------------------------------------

def sqlite3_shell(path: Path, statement: str) -> None:
    need(shutil.which("sqlite3") is not None, "the sqlite3 shell is not installed (Debian package sqlite3)")
    done = subprocess.run(["sqlite3", "-bail", str(path), statement], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_what_the_sqlite3_shell_changes_leaves_a_gap_in_history_and_breaks_nothing(client, app):
    for title in ("Main", "Spare", "Third"):
        post(client, {"title": title, "thrust": 1})
    client.patch("/api/engines/1", json={"thrust": 2})
    sqlite3_shell(database(app), "UPDATE engine SET thrust = 99, version = 1 WHERE id = 1;"
                                 "DELETE FROM engine WHERE id = 2;"
                                 "INSERT INTO engine (title, thrust, updated_at) VALUES"
                                 " ('From the shell', 5, '2026-11-28 10:00:00.000000')")
    page = client.get("/engines/1/history").get_data(as_text=True)
    assert "Another program changed this engine after its last recorded version" in page
    # Version 2 again: versions need not be unique, so the change is kept.
    assert client.patch("/api/engines/1", json={"thrust": 3}).get_json()["version"] == 2
    assert [(version, thrust) for version, _, _, _, thrust in history(client, 1)] == [(2, 3), (2, 2), (1, 1)]
    assert client.post("/api/engines/1/revert", json={"version": 1}).get_json()["thrust"] == 1
    assert client.get("/api/deleted").get_json()["engines"] == [], "a delete the shell made left no record"
    assert client.post("/api/deleted/2/restore").get_json()["error"] == (
        "Engine 2 is not deleted: it was deleted by another program, which left no record of it in the history.")
    assert client.get("/api/engines/4/history").get_json() == {"history": [], "next": None}
    assert "No recorded history" in client.get("/engines/4/history").get_data(as_text=True)
    assert client.delete("/api/engines/4").status_code == 204
    assert client.post("/api/deleted/4/restore").get_json()["title"] == "From the shell"
    assert client.get("/").status_code == 200


# -- who ----------------------------------------------------------------------------------------

def test_a_change_is_by_the_os_user_on_the_desktop_and_by_a_token_holder_on_a_token_server(instance_dir, tmp_path):
    desktop = engines.create_app({"TESTING": True}, instance_path=instance_dir)
    post(desktop.test_client(), {"title": "Main"})
    token = engines.create_app({"TESTING": True, "REQUIRE_TOKEN": True, "TOKEN": "a-token-of-16-chars"},
                               instance_path=tmp_path / "served")
    client = token.test_client()
    client.post("/api/engines", json={"title": "Main"}, headers={"Authorization": "Bearer a-token-of-16-chars"})
    assert desktop.test_client().get("/api/engines/1/history").get_json()["history"][0]["changed_by"] == \
        getpass.getuser()
    assert client.get("/api/engines/1/history?token=a-token-of-16-chars").get_json()["history"][0]["changed_by"] \
        == "token holder"


# -- imports and the commands ---------------------------------------------------------------------

@pytest.mark.parametrize("with_ids", [False, True])
def test_an_import_records_each_engine_it_adds_and_a_refused_one_records_nothing(client, app, with_ids):
    post(client, {"title": "Before"})
    header = "id,title,thrust,version" if with_ids else "title,thrust"
    rows = [f"{i + 10},Imported {i},{i},3" if with_ids else f"Imported {i},{i}" for i in range(50)]
    with app.app_context():
        assert engines.import_engines(io.BytesIO("\n".join([header, *rows]).encode())) == 50
        with pytest.raises(engines.ImportRejected):
            engines.import_engines(io.BytesIO(b"title,thrust\nGood,1\nBad,-1\n"))
    records = history_rows(app)[1:]
    assert len(records) == 50
    first_id = 10 if with_ids else 2
    assert [(r[1], r[2], r[3], r[4], r[6], r[7]) for r in records] == [
        (first_id + i, 3 if with_ids else 1, f"Imported {i}", i, "import", "import") for i in range(50)]
    assert len({r[5] for r in records}) == 1, "one import, one moment"


def test_seed_records_each_engine_it_adds(app, runner, client):
    assert runner.invoke(args=["seed", "--count", "3"]).exit_code == 0
    assert history(client, 3) == [(1, "create", "cli", "Engine 000003", 3 * 7919)]


def test_the_history_command_prints_every_version_newest_first(app, runner, client):
    post(client, {"title": "Main", "thrust": 1000})
    client.patch("/api/engines/1", json={"thrust": 2000})
    result = runner.invoke(args=["history", "1"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "Engine 1 “Main”: thrust 2,000, version 2."
    assert lines[1].split() == ["version", "changed", "at", "(UTC)", "change", "source", "by", "thrust", "title"]
    assert lines[2].split()[:1] + lines[2].split()[3:] == ["2", "update", "api", getpass.getuser(), "2,000", "Main"]
    assert lines[3].split()[3:5] == ["create", "api"] and len(lines) == 4
    client.delete("/api/engines/1")
    assert runner.invoke(args=["history", "1"]).output.startswith("Engine 1 “Main”: deleted at ")
    unknown = runner.invoke(args=["history", "2"])
    assert unknown.exit_code == 1 and unknown.output == "Error: There is no engine 2, and there never was.\n"
    assert runner.invoke(args=["history", "x"]).exit_code == 2


def test_restore_engine_brings_back_a_deleted_engine_from_the_command_line(app, runner, client):
    post(client, {"title": "Main", "thrust": 7})
    client.delete("/api/engines/1")
    result = runner.invoke(args=["restore-engine", "1"])
    assert result.exit_code == 0 and result.output == "Restored engine 1 “Main”: thrust 7, version 3.\n"
    assert history(client, 1)[0] == (3, "restore", "cli", "Main", 7)
    again = runner.invoke(args=["restore-engine", "1"])
    assert again.exit_code == 1 and again.output == "Error: Engine 1 is not deleted: it exists.\n"


# -- retention --------------------------------------------------------------------------------------

def age_history(app, days: int) -> None:
    """Make every history record `days` days older, as if the changes had been made then."""
    with closing(sqlite3.connect(database(app))) as connection:
        connection.execute("UPDATE engine_history SET changed_at = strftime('%Y-%m-%d %H:%M:%f000', changed_at, "
                           f"'-{days} days')")
        connection.commit()


def test_prune_history_removes_old_records_but_never_an_engine_s_newest(instance_dir):
    app = engines.create_app({"TESTING": True, "HISTORY_KEEP_DAYS": 30}, instance_path=instance_dir)
    client, runner = app.test_client(), app.test_cli_runner()
    for title in ("Main", "Spare"):
        post(client, {"title": title, "thrust": 1})
    for thrust in (2, 3):
        client.patch("/api/engines/1", json={"thrust": thrust})
    client.patch("/api/engines/2", json={"thrust": 2})
    client.delete("/api/engines/2")
    age_history(app, 31)
    client.patch("/api/engines/1", json={"thrust": 4})  # a record of today
    result = runner.invoke(args=["prune-history"])
    assert result.output == "Removed 5 history records older than 30 days; each engine's newest record is kept.\n"
    assert [(version, change) for version, change, *_ in history(client, 1)] == [(4, "update")]
    assert [(version, change) for version, change, *_ in history(client, 2)] == [(3, "delete")]
    assert client.post("/api/deleted/2/restore").status_code == 201, "a deleted engine can still be restored"
    assert runner.invoke(args=["prune-history", "--keep-days", "1"]).output.startswith("Removed 1 history record ")


def test_without_history_keep_days_prune_history_removes_nothing(app, runner, client):
    post(client, {"title": "Main"})
    age_history(app, 10_000)
    result = runner.invoke(args=["prune-history"])
    assert result.exit_code == 0 and "Nothing was removed." in result.output
    assert len(history_rows(app)) == 1
    assert runner.invoke(args=["prune-history", "--keep-days", "0"]).exit_code == 2


@pytest.mark.parametrize("value", [0, -1, 1.5, "30", True])
def test_history_keep_days_must_be_a_whole_number_of_days_or_null(instance_dir, value):
    with pytest.raises(engines.StartupError, match="the setting HISTORY_KEEP_DAYS must be a whole number of days"):
        engines.create_app({"TESTING": True, "HISTORY_KEEP_DAYS": value}, instance_path=instance_dir)


def test_engines_applies_history_keep_days_at_every_start(instance_dir):
    app = engines.create_app({"TESTING": True}, instance_path=instance_dir)
    client = app.test_client()
    post(client, {"title": "Main", "thrust": 1})
    client.patch("/api/engines/1", json={"thrust": 2})
    age_history(app, 400)
    with app.app_context():
        engines.db.engine.dispose()
    server = LiveServer(instance_dir, env={"ENGINES_HISTORY_KEEP_DAYS": "365"})
    try:
        kept = requests.get(f"{server.url}/api/engines/1/history", timeout=10).json()["history"]
        assert [record["version"] for record in kept] == [2]
    finally:
        assert server.stop() == 0
    assert "removed 1 history records older than 365 days (HISTORY_KEEP_DAYS)" in \
        (instance_dir / "engines.log").read_text(encoding="utf-8")


def undo_fields(page: str) -> dict:
    """The fields of the flash message's Undo form: the change, and for a change of many engines, the last record."""
    form = re.search(r'<form method="post" action="/undo" class="undo">(.*?)</form>', page, re.S).group(1)
    return {name: value for name, value in re.findall(r'name="(change|through)" value="(\d+)"', form)}


def test_undo_of_an_import_deletes_exactly_its_engines_and_can_itself_be_undone(client, app):
    post(client, {"title": "Before", "thrust": 1})
    csv = "title,thrust\n" + "\n".join(f"Imported Straße {i},{i}" for i in range(300))
    imported = form_post(client, "/import", {"file": (io.BytesIO(csv.encode()), "many.csv")}, follow_redirects=True)
    assert "Imported 300 engines from “many.csv”." in imported.get_data(as_text=True)
    undo_import = undo_fields(imported.get_data(as_text=True))
    assert set(undo_import) == {"change", "through"}
    post(client, {"title": "After", "thrust": 2})

    undone = form_post(client, "/undo", undo_import, follow_redirects=True)
    assert "Deleted 300 engines (see Recently deleted)." in undone.get_data(as_text=True)
    assert [title for _, title, _ in all_engines(app)] == ["Before", "After"]
    assert client.get("/api/engines?q=strasse").get_json()["total"] == 0
    assert len(client.get("/api/deleted?per_page=500").get_json()["engines"]) == 300

    redone = form_post(client, "/undo", undo_fields(undone.get_data(as_text=True)), follow_redirects=True)
    assert "Restored 300 engines." in redone.get_data(as_text=True)
    assert len(all_engines(app)) == 302 and client.get("/api/engines?q=strasse").get_json()["total"] == 300
    assert [change for _, change, *_ in history(client, 5)] == ["restore", "delete", "import"]
    assert client.post("/api/engines", json={"title": "Next"}).get_json()["id"] == 303

    client.patch("/api/engines/5", json={"thrust": 9})  # one of them changes: undoing the restore would undo it
    kept = history_rows(app)
    stale = form_post(client, "/undo", undo_fields(redone.get_data(as_text=True)))
    assert stale.status_code == 409 and "1 of these 300 engines changed since" in stale.get_data(as_text=True)
    assert history_rows(app) == kept and len(all_engines(app)) == 303
    assert form_post(client, "/undo", undo_import).status_code == 409
