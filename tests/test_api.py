"""The JSON API: the contract other programs rely on."""

from __future__ import annotations

import base64
import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

import engines
from conftest import SEARCH_CASES, SEARCH_TITLES, add_engines, all_engines


def post(client, body, **kwargs):
    return client.post("/api/engines", json=body, **kwargs)


def cursor(raw: str) -> str:
    """A page cursor as a client could forge it: `raw` JSON, base64-encoded
    as Engines encodes its own."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def changed_at(engine: dict) -> datetime:
    """An engine's updated_at, which must be ISO 8601 in UTC."""
    moment = datetime.fromisoformat(engine["updated_at"])
    assert moment.utcoffset().total_seconds() == 0
    return moment


def test_health_says_ok_and_names_the_version(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "version": engines.__version__}


def test_create_read_update_delete_round_trip(client, app):
    before = datetime.now(UTC)
    created = post(client, {"title": "  Main  ", "thrust": 1200})
    assert created.status_code == 201
    engine = created.get_json()
    assert engine == {"id": 1, "title": "Main", "thrust": 1200, "version": 1, "updated_at": engine["updated_at"]}
    assert before <= changed_at(engine) <= datetime.now(UTC)
    assert created.headers["Location"] == "/api/engines/1"

    assert client.get("/api/engines/1").get_json() == engine

    patched = client.patch("/api/engines/1", json={"thrust": 0})
    assert patched.status_code == 200
    thrust_set = patched.get_json()
    assert thrust_set == {"id": 1, "title": "Main", "thrust": 0, "version": 2, "updated_at": thrust_set["updated_at"]}
    assert changed_at(thrust_set) > changed_at(engine)
    patched = client.patch("/api/engines/1", json={"title": "Main engine"})
    renamed = patched.get_json()
    assert renamed == {"id": 1, "title": "Main engine", "thrust": 0, "version": 3, "updated_at": renamed["updated_at"]}
    assert changed_at(renamed) > changed_at(thrust_set)
    assert all_engines(app) == [(1, "Main engine", 0)]

    deleted = client.delete("/api/engines/1")
    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert client.get("/api/engines/1").status_code == 404
    assert all_engines(app) == []


def test_thrust_defaults_to_zero(client):
    assert post(client, {"title": "Vernier"}).get_json()["thrust"] == 0


def test_ids_of_deleted_engines_are_never_reused(client):
    post(client, {"title": "A"})
    post(client, {"title": "B"})
    client.delete("/api/engines/2")
    assert post(client, {"title": "C"}).get_json()["id"] == 3


def test_list_shape(client):
    created = post(client, {"title": "Main", "thrust": 3}).get_json()
    body = client.get("/api/engines").get_json()
    assert body == {"engines": [{"id": 1, "title": "Main", "thrust": 3, "version": 1,
                                 "updated_at": created["updated_at"]}], "total": 1, "total_is_lower_bound": False,
                    "next": None, "prev": None}


@pytest.mark.parametrize("method, path", [
    ("get", "/api/engines/99"),
    ("patch", "/api/engines/99"),
    ("delete", "/api/engines/99"),
    ("get", "/api/engines/99999999999999999999999"),
    ("get", "/api/nothing-here"),
])
def test_unknown_engine_or_route_is_a_json_404(client, method, path):
    response = getattr(client, method)(path, json={"thrust": 1} if method == "patch" else None)
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json()["error"]


def test_wrong_method_is_a_json_405(client):
    response = client.put("/api/engines", json={"title": "x"})
    assert response.status_code == 405
    assert "error" in response.get_json()
    assert "POST" in response.headers["Allow"]


BAD_BODIES = [
    # (body, field named in the error or None)
    ({}, "title"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 129}, "title"),
    ({"title": None}, "title"),
    ({"title": 12}, "title"),
    ({"title": ["a"]}, "title"),
    ({"title": "a\x00b"}, "title"),
    ({"title": "line\nbreak"}, "title"),
    ({"title": "tab\there"}, "title"),
    ({"title": "del\x7fdel"}, "title"),
    ({"title": "c1\x85c1"}, "title"),
    ({"title": "sep\u2028sep"}, "title"),
    ({"title": "ok", "thrust": True}, "thrust"),
    ({"title": "ok", "thrust": False}, "thrust"),
    ({"title": "ok", "thrust": 1.5}, "thrust"),
    ({"title": "ok", "thrust": 1.0}, "thrust"),
    ({"title": "ok", "thrust": "12"}, "thrust"),
    ({"title": "ok", "thrust": None}, "thrust"),
    ({"title": "ok", "thrust": -1}, "thrust"),
    ({"title": "ok", "thrust": 2_147_483_648}, "thrust"),
    ({"title": "ok", "thrust": 10**30}, "thrust"),
    ({"title": "ok", "thrust": {"n": 1}}, "thrust"),
    ({"title": "ok", "colour": "red"}, "colour"),
    ({"title": "ok", "id": 7}, "id"),
]


@pytest.mark.parametrize("body, field", BAD_BODIES)
def test_bad_fields_are_rejected_by_name(client, app, body, field):
    response = post(client, body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["error"]
    assert field in error["fields"]
    assert error["fields"][field]
    assert all_engines(app) == []


@pytest.mark.parametrize("body, field", [(body, field) for body, field in BAD_BODIES if body])
def test_bad_fields_in_a_patch_change_nothing(client, app, body, field):
    post(client, {"title": "Main", "thrust": 5})
    response = client.patch("/api/engines/1", json=body)
    assert response.status_code == 400
    assert field in response.get_json()["fields"]
    assert all_engines(app) == [(1, "Main", 5)]


def test_limits_are_inclusive(client):
    assert post(client, {"title": "x" * 128, "thrust": 2_147_483_647}).status_code == 201
    assert post(client, {"title": "y", "thrust": 0}).status_code == 201


def test_empty_patch_is_rejected(client):
    post(client, {"title": "Main"})
    response = client.patch("/api/engines/1", json={})
    assert response.status_code == 400
    assert "Nothing to change" in response.get_json()["error"]


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"title"', b"null", b"12", b"", b"\xff\xfe", b"{'title': 'x'}",
                                 b'{"title": "x", "thrust": NaN}', b"1" * 5000])
def test_malformed_or_non_object_json_is_400(client, app, raw):
    response = client.post("/api/engines", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]
    assert all_engines(app) == []


@pytest.mark.parametrize("raw", ["[" * 5000, "[" * 5000 + "]" * 5000, '{"title": ' * 3000,
                                 '{"a": ' * 3000 + "1" + "}" * 3000,
                                 '{"title": "x", "thrust": ' + "[" * 5000 + "]" * 5000 + "}"])
def test_a_body_nested_too_deeply_is_400_saying_so(client, app, raw):
    response = client.post("/api/engines", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == "The body is nested too deeply: send one JSON object of plain values."
    assert all_engines(app) == []


def test_a_number_with_thousands_of_digits_is_400(client, app):
    response = client.post("/api/engines", data='{"title": "x", "thrust": 1' + "0" * 5000 + "}",
                           content_type="application/json")
    assert response.status_code == 400
    assert "too many digits" in response.get_json()["error"]
    assert all_engines(app) == []


@pytest.mark.parametrize("raw, shown", [
    (r'{"\ud800": 1}', r"\ud800"),
    (r'{"a\udfffb": 1}', r"a\udfffb"),
    (r'{"\u0000x\u001b[31m": 1}', r"\x00x\x1b[31m"),
    (r'{"\u202egnp.exe": 1}', r"\u202egnp.exe"),
    ('{"' + "k" * 5000 + '": 1}', "k" * 64 + "…"),
])
def test_a_field_name_is_echoed_with_surrogates_and_control_characters_escaped(client, app, raw, shown):
    response = client.post("/api/engines", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["fields"][shown] == "Unknown field."
    assert all_engines(app) == []


@pytest.mark.parametrize("query, shown", [
    ("%01x=1", r"\x01x"),
    ("%E2%80%AEx=1", r"\u202ex"),
    ("%ED%A0%80=1", "%ED%A0%80"),  # a surrogate's bytes are not UTF-8: Werkzeug keeps them quoted
    ("p" * 5000 + "=1", "p" * 64 + "…"),
])
def test_a_parameter_name_is_echoed_with_control_characters_escaped(client, query, shown):
    response = client.get(f"/api/engines?{query}")
    assert response.status_code == 400
    assert response.get_json()["fields"][shown] == "Unknown parameter."


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_write_without_json_content_type_is_415(client, app, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/engines", data=b'{"title": "x"}', headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]
    post(client, {"title": "Main"})
    response = client.patch("/api/engines/1", data=b'{"title": "y"}', headers=headers)
    assert response.status_code == 415
    assert all_engines(app) == [(1, "Main", 0)]


def test_json_with_charset_is_accepted(client):
    response = client.post("/api/engines", data=b'{"title": "x"}',
                           content_type="application/json; charset=utf-8")
    assert response.status_code == 201


def test_body_over_64_kib_is_413(client, app):
    body = json.dumps({"title": "x" * (64 * 1024)})
    response = client.post("/api/engines", data=body, content_type="application/json")
    assert response.status_code == 413
    assert "64 KiB" in response.get_json()["error"]
    assert all_engines(app) == []


# -- search ------------------------------------------------------------------

@pytest.mark.parametrize("q, expected", SEARCH_CASES)
def test_search_is_a_literal_case_insensitive_substring(client, app, q, expected):
    add_engines(app, [{"title": t, "thrust": 0} for t in SEARCH_TITLES])
    response = client.get("/api/engines", query_string={"q": q})
    assert response.status_code == 200
    body = response.get_json()
    assert [e["title"] for e in body["engines"]] == expected
    assert body["total"] == len(expected)


def test_titles_come_back_exactly_as_stored(client):
    for title in SEARCH_TITLES:
        assert post(client, {"title": title}).get_json()["title"] == title


# -- sort and pages ------------------------------------------------------------

@pytest.fixture
def thousand(app):
    rows = [{"title": f"Engine {(i * 37) % 1000:03d}{'ab'[i % 2]}", "thrust": (i * 7) % 50} for i in range(1000)]
    add_engines(app, rows)
    return all_engines(app)


def walk(client, url, total=1000):
    seen, pages = [], 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        body = response.get_json()
        assert body["total"] == total
        seen += [(e["id"], e["title"], e["thrust"]) for e in body["engines"]]
        url = body["next"]
        pages += 1
    return seen, pages


@pytest.mark.parametrize("sort, key", [
    ("id", lambda r: r[0]),
    ("-id", lambda r: r[0]),
    ("title", lambda r: (r[1].lower(), r[0])),
    ("-title", lambda r: (r[1].lower(), r[0])),
    ("thrust", lambda r: (r[2], r[0])),
    ("-thrust", lambda r: (r[2], r[0])),
])
@pytest.mark.parametrize("per_page", [7, 50, 500])
def test_next_walks_every_row_exactly_once_in_order(client, thousand, sort, key, per_page):
    seen, pages = walk(client, f"/api/engines?sort={sort}&per_page={per_page}")
    expected = sorted(thousand, key=key, reverse=sort.startswith("-"))
    assert seen == expected
    assert pages == -(-1000 // per_page)


def test_a_token_in_the_query_is_taken_and_never_repeated_in_next_or_prev(client, thousand):
    page = client.get("/api/engines?token=anything&per_page=5&q=Engine").get_json()
    assert len(page["engines"]) == 5
    page = client.get(page["next"]).get_json()
    assert "token" not in page["next"] and "token" not in page["prev"]


def test_next_is_an_absolute_url_that_keeps_the_query(client, thousand):
    body = client.get("/api/engines?q=engine&sort=-thrust&per_page=10").get_json()
    assert body["next"].startswith("http://localhost/api/engines?")
    assert "q=engine" in body["next"] and "sort=-thrust" in body["next"] and "per_page=10" in body["next"]


def test_default_page_is_fifty(client, thousand):
    assert len(client.get("/api/engines").get_json()["engines"]) == 50


def test_one_engine_a_page_walks_them_all(client, thousand):
    seen, pages = walk(client, "/api/engines?sort=-thrust&per_page=1")
    assert seen == sorted(thousand, key=lambda r: (r[2], r[0]), reverse=True)
    assert pages == 1000


def test_search_with_pages(client, thousand):
    expected = [r for r in thousand if "9" in r[1]]
    seen, _ = walk(client, "/api/engines?per_page=3&q=9", total=len(expected))
    assert seen == expected


@pytest.mark.parametrize("query, field", [
    ("per_page=0", "per_page"),
    ("per_page=501", "per_page"),
    ("per_page=-1", "per_page"),
    ("per_page=abc", "per_page"),
    ("per_page=1.5", "per_page"),
    ("per_page=%D9%A3", "per_page"),
    ("sort=name", "sort"),
    ("sort=--id", "sort"),
    ("sort=-", "sort"),
    ("sort=", "sort"),
    ("after=!!!", "after"),
    ("after=bm90IGpzb24", "after"),
    ("after=WzEsMiwzXQ", "after"),
    ("page=2", "page"),
    ("q=a&q=b", "q"),
    ("q=" + "x" * 129, "q"),
    ("q=%00", "q"),
    ("after=" + cursor("[" * 3000), "after"),
    ("before=" + cursor("[" * 3000), "before"),
    ("after=" + cursor("[" + "1" * 5000 + ", 1]"), "after"),
    ("after=" + "A" * 5000, "after"),
    ("sort=title&after=" + cursor(r'["\ud800", 1]'), "after"),
    ("sort=-title&before=" + cursor(r'["a\udc00b", 1]'), "before"),
    ("sort=title&after=" + cursor(json.dumps(["x" * 129, 1])), "after"),
])
def test_bad_list_parameters_are_400(client, query, field):
    response = client.get(f"/api/engines?{query}")
    assert response.status_code == 400
    assert field in response.get_json()["fields"]


def test_pages_sorted_by_the_longest_titles_walk_on(client, app):
    titles = [f"{i}" + "🚀" * 127 for i in range(3)] + [f"{i}" + '"\\' * 63 + "x" for i in range(3)]
    add_engines(app, [{"title": title, "thrust": 0} for title in titles])
    page = client.get("/api/engines?sort=-title&per_page=1").get_json()
    seen = [page["engines"][0]["title"]]
    while page["next"]:
        page = client.get(page["next"]).get_json()
        seen.append(page["engines"][0]["title"])
    assert seen == sorted(titles, reverse=True)


def test_a_cursor_from_another_sort_is_refused(client, thousand):
    next_url = client.get("/api/engines?sort=title&per_page=2").get_json()["next"]
    cursor = next_url.split("after=")[1].split("&")[0]
    response = client.get(f"/api/engines?sort=thrust&after={cursor}")
    assert response.status_code == 400
    assert "after" in response.get_json()["fields"]


def walk_back(client, url, total=1000):
    """Follow `prev` from the page at `url` to the first page; the rows in
    list order."""
    pages = []
    while url:
        body = client.get(url).get_json()
        assert body["total"] == total
        pages.insert(0, [(e["id"], e["title"], e["thrust"]) for e in body["engines"]])
        url = body["prev"]
    return [row for page in pages for row in page]


@pytest.mark.parametrize("sort, key", [
    ("id", lambda r: r[0]),
    ("-title", lambda r: (r[1].lower(), r[0])),
    ("thrust", lambda r: (r[2], r[0])),
])
def test_prev_walks_back_over_every_row_exactly_once(client, thousand, sort, key):
    url, last = f"/api/engines?sort={sort}&per_page=70", None
    while url:  # to the last page
        body = client.get(url).get_json()
        assert (body["prev"] is None) == (last is None)
        last, url = url, body["next"]
    assert walk_back(client, last) == sorted(thousand, key=key, reverse=sort.startswith("-"))


def test_prev_of_a_page_is_the_page_before_it(client, thousand):
    first = client.get("/api/engines?per_page=10").get_json()
    second = client.get(first["next"]).get_json()
    third = client.get(second["next"]).get_json()
    assert client.get(third["prev"]).get_json()["engines"] == second["engines"]
    back_to_first = client.get(second["prev"]).get_json()
    assert back_to_first["engines"] == first["engines"]
    assert back_to_first["next"] == first["next"]
    assert "before=" in second["prev"] and "per_page=10" in second["prev"]


@pytest.mark.parametrize("query, field", [("before=!!!", "before"), ("before=WzEsMl0&after=WzEsMl0", "before")])
def test_bad_previous_page_parameters_are_400(client, query, field):
    response = client.get(f"/api/engines?{query}")
    assert response.status_code == 400
    assert field in response.get_json()["fields"]


def test_paging_does_not_skip_when_rows_are_deleted_between_pages(client, thousand):
    first = client.get("/api/engines?per_page=10").get_json()
    for engine in first["engines"]:
        client.delete(f"/api/engines/{engine['id']}")
    second = client.get(first["next"]).get_json()
    assert second["engines"][0]["id"] == 11


# -- versions: edits that never overwrite blindly ------------------------------

def test_an_engine_is_sent_with_its_version_as_etag(client):
    assert post(client, {"title": "Main"}).headers["ETag"] == '"1"'
    client.patch("/api/engines/1", json={"thrust": 5})
    response = client.get("/api/engines/1")
    assert response.headers["ETag"] == '"2"' and response.get_json()["version"] == 2


def test_a_patch_that_changes_nothing_keeps_the_version(client):
    engine = post(client, {"title": "Main", "thrust": 5}).get_json()
    assert client.patch("/api/engines/1", json={"thrust": 5}).get_json() == engine


def test_a_patch_naming_the_title_it_has_keeps_it_found_and_writes_only_a_change(client):
    """A title sent unchanged is written again with the thrust (the search
    indexes are rebuilt for it by their triggers): it must stay found, and
    sending both unchanged must write nothing."""
    post(client, {"title": "Straße 9", "thrust": 1})
    changed = client.patch("/api/engines/1", json={"title": "Straße 9", "thrust": 2})
    assert changed.get_json()["version"] == 2
    assert client.patch("/api/engines/1", json={"title": "Straße 9", "thrust": 2}).get_json() == changed.get_json()
    for q in ["strasse", "STRASSE 9", "ß", "e 9"]:
        assert [e["id"] for e in client.get("/api/engines", query_string={"q": q}).get_json()["engines"]] == [1], q
    history = client.get("/api/engines/1/history").get_json()["history"]
    assert [(h["version"], h["thrust"]) for h in history] == [(2, 2), (1, 1)]


def test_an_engine_at_the_highest_version_is_still_changed_deleted_and_restored(client, app, instance_dir):
    """Another program (or an import) can leave an engine at the highest
    version there is. A change keeps it there, as a delete and a restore
    do, rather than fail: the history records each."""
    post(client, {"title": "Main", "thrust": 1})
    with closing(sqlite3.connect(instance_dir / "engines.sqlite3")) as other, other:
        other.execute("UPDATE engine SET version = ?", (engines.MAX_INTEGER,))
    top = f'"{engines.MAX_INTEGER}"'
    response = client.patch("/api/engines/1", json={"thrust": 2}, headers={"If-Match": top})
    assert (response.status_code, response.get_json()["version"], response.headers["ETag"]) == \
        (200, engines.MAX_INTEGER, top)
    assert client.delete("/api/engines/1", headers={"If-Match": top}).status_code == 204
    assert client.post("/api/deleted/1/restore").status_code == 201
    history = client.get("/api/engines/1/history").get_json()["history"]
    assert [(h["change"], h["version"], h["thrust"]) for h in history] == [
        ("restore", engines.MAX_INTEGER, 2), ("delete", engines.MAX_INTEGER, 2), ("update", engines.MAX_INTEGER, 2),
        ("create", 1, 1)]
    assert all_engines(app) == [(1, "Main", 2)]


@pytest.mark.parametrize("headers, body", [
    ({"If-Match": '"2"'}, {"thrust": 9}),
    ({"If-Match": "2"}, {"thrust": 9}),
    ({"If-Match": ' "2" '}, {"thrust": 9}),
    ({"If-Match": "*"}, {"thrust": 9}),
    ({}, {"thrust": 9, "version": 2}),
    ({"If-Match": '"2"'}, {"thrust": 9, "version": 2}),
])
def test_a_change_based_on_the_current_version_is_saved(client, app, headers, body):
    post(client, {"title": "Main", "thrust": 1})
    client.patch("/api/engines/1", json={"thrust": 2})
    response = client.patch("/api/engines/1", json=body, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["version"] == 3 and response.headers["ETag"] == '"3"'
    assert all_engines(app) == [(1, "Main", 9)]


@pytest.mark.parametrize("headers, body", [
    ({"If-Match": '"1"'}, {"thrust": 9}),
    ({"If-Match": "1"}, {"title": "Mine"}),
    ({}, {"thrust": 9, "version": 1}),
])
def test_a_change_based_on_an_older_version_is_409_with_the_engine_as_it_is_now(client, app, headers, body):
    post(client, {"title": "Main", "thrust": 1})
    theirs = client.patch("/api/engines/1", json={"title": "Theirs", "thrust": 2}).get_json()
    response = client.patch("/api/engines/1", json=body, headers=headers)
    assert response.status_code == 409
    answer = response.get_json()
    assert answer["engine"] == theirs
    assert "changed by someone else since you read it: it is now at version 2" in answer["error"]
    assert response.headers["ETag"] == '"2"'
    assert all_engines(app) == [(1, "Theirs", 2)]


def test_a_delete_based_on_an_older_version_is_409_and_deletes_nothing(client, app):
    post(client, {"title": "Main"})
    client.patch("/api/engines/1", json={"thrust": 2})
    response = client.delete("/api/engines/1", headers={"If-Match": '"1"'})
    assert response.status_code == 409
    assert response.get_json()["engine"]["version"] == 2
    assert all_engines(app) == [(1, "Main", 2)]
    assert client.delete("/api/engines/1", headers={"If-Match": '"2"'}).status_code == 204
    assert all_engines(app) == []


@pytest.mark.parametrize("if_match", ['W/"1"', '"1", "2"', '"one"', '"0"', '"-1"', '"1.5"', '""', '"',
                                      '"99999999999999999999"'])
@pytest.mark.parametrize("method", ["patch", "delete"])
def test_an_if_match_that_is_not_one_version_is_400(client, app, if_match, method):
    post(client, {"title": "Main"})
    response = getattr(client, method)("/api/engines/1", json={"thrust": 3} if method == "patch" else None,
                                        headers={"If-Match": if_match})
    assert response.status_code == 400
    assert 'If-Match: "3"' in response.get_json()["fields"]["If-Match"]
    assert all_engines(app) == [(1, "Main", 0)]


@pytest.mark.parametrize("version", ["1", 0, -1, True, 1.5, None, [1], 2**31])
def test_a_version_that_is_not_a_whole_number_from_1_is_400(client, app, version):
    post(client, {"title": "Main"})
    response = client.patch("/api/engines/1", json={"thrust": 3, "version": version})
    assert response.status_code == 400
    assert "Version must be a whole number" in response.get_json()["fields"]["version"]
    assert all_engines(app) == [(1, "Main", 0)]


def test_if_match_and_version_must_name_the_same_version(client, app):
    post(client, {"title": "Main"})
    response = client.patch("/api/engines/1", json={"thrust": 3, "version": 1}, headers={"If-Match": '"2"'})
    assert response.status_code == 400
    assert "another version" in response.get_json()["fields"]["version"]


def test_a_version_alone_is_nothing_to_change(client):
    post(client, {"title": "Main"})
    response = client.patch("/api/engines/1", json={"version": 1})
    assert response.status_code == 400
    assert "Nothing to change" in response.get_json()["error"]


def test_a_new_engine_cannot_be_given_a_version(client, app):
    response = post(client, {"title": "Main", "version": 7})
    assert response.status_code == 400
    assert response.get_json()["fields"] == {"version": "Unknown field."}
    assert all_engines(app) == []


@pytest.mark.parametrize("title", ["a\u0000b", "tab\tin it", "\u2028", "   "])
def test_a_title_another_program_wrote_still_makes_a_page_cursor(client, app, title):
    """The sqlite3 shell can store titles the API would refuse (control
    characters, blanks): walking the list sorted by title still works."""
    for name in ("A", "B"):
        client.post("/api/engines", json={"title": name})
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.execute("UPDATE engine SET title = ? WHERE id = 1", (title,))
        connection.commit()
    first = client.get("/api/engines?sort=title&per_page=1").get_json()
    second = client.get(first["next"])
    assert second.status_code == 200
    assert sorted(e["id"] for e in first["engines"] + second.get_json()["engines"]) == [1, 2]


# -- the page's poll: has anything changed? ---------------------------------------------------

def test_the_state_tag_is_a_304_until_any_write_from_anywhere_changes_it(client, app):
    first = client.get("/api/state")
    tag = first.headers["ETag"]
    assert first.status_code == 200 and first.get_json() == {"state": tag.strip('"')}
    assert first.headers["Cache-Control"] == "no-cache"
    assert client.get("/api/state", headers={"If-None-Match": tag}).status_code == 304
    client.get("/api/engines")  # reading changes nothing
    assert client.get("/api/state", headers={"If-None-Match": tag}).status_code == 304
    client.post("/api/engines", json={"title": "Main"})  # Engines' own write
    after_ours = client.get("/api/state", headers={"If-None-Match": tag})
    assert after_ours.status_code == 200
    tag = after_ours.headers["ETag"]
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as shell:  # another program's
        shell.execute("UPDATE engine SET thrust = 5 WHERE id = 1")
        shell.commit()
    assert client.get("/api/state", headers={"If-None-Match": tag}).status_code == 200


def test_a_state_tag_of_an_earlier_run_is_not_taken_for_this_one(client, app, instance_dir):
    tag = client.get("/api/state").headers["ETag"]
    later = engines.create_app({"TESTING": True}, instance_path=instance_dir)
    assert later.test_client().get("/api/state", headers={"If-None-Match": tag}).status_code == 200
