"""Throw a wide set of bad inputs at the API: each gets a 4xx with a message,
the database is unchanged, and nothing ever answers 5xx."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import add_engines, all_engines

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)

bad_titles = (st.none() | st.booleans() | st.integers() | st.floats() | st.lists(st.text(), max_size=2)
              | st.just("") | st.text(" \t", max_size=5)
              | st.text(min_size=129, max_size=300).filter(lambda t: len(t.strip()) > 128)
              | st.tuples(st.text(max_size=10), st.sampled_from("\x00\x01\x1f\x7f\x9f\u2028\ud800"),
                          st.text(max_size=10)).map(lambda p: f"a{p[0]}{p[1]}{p[2]}z"))
bad_thrusts = (st.none() | st.booleans() | st.floats() | st.text(max_size=12)
               | st.integers(max_value=-1) | st.integers(min_value=2**31) | st.lists(st.integers(), max_size=2))
good_titles = st.text(min_size=1, max_size=20).filter(
    lambda t: t.strip() and t.isprintable())


@st.composite
def bad_engine_bodies(draw):
    """A JSON object with at least one field that breaks a rule."""
    body = {}
    kind = draw(st.sampled_from(["title", "thrust", "unknown", "both"]))
    body["title"] = draw(bad_titles) if kind in ("title", "both") else draw(good_titles)
    if kind in ("thrust", "both"):
        body["thrust"] = draw(bad_thrusts)
    if kind == "unknown":
        body[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in ("title", "thrust", "version")))] \
            = draw(json_values)
    return body


fuzz = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                         HealthCheck.too_slow])


def seeded(app):
    if not all_engines(app):
        add_engines(app, [{"title": "Main", "thrust": 10}, {"title": "Spare", "thrust": 0}])
    return all_engines(app)


def assert_refused(response, before, app):
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    assert isinstance(response.get_json()["error"], str) and response.get_json()["error"]
    assert all_engines(app) == before


@fuzz
@given(body=bad_engine_bodies(), target=st.sampled_from(["post", "patch"]))
def test_bad_engine_fields_are_refused_and_change_nothing(client, app, body, target):
    before = seeded(app)
    url = "/api/engines" if target == "post" else "/api/engines/1"
    response = client.open(url, method=target.upper(), json=body)
    assert_refused(response, before, app)
    assert response.status_code == 400
    assert response.get_json()["fields"]


@fuzz
@given(body=json_values.filter(lambda v: not isinstance(v, dict)) | st.binary(max_size=200).filter(
    lambda b: not _is_json_object(b)), method=st.sampled_from(["post", "patch"]))
def test_bodies_that_are_not_a_json_object_are_refused(client, app, body, method):
    before = seeded(app)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = "/api/engines" if method == "post" else "/api/engines/2"
    response = getattr(client, method)(url, data=raw, content_type="application/json")
    assert_refused(response, before, app)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


@fuzz
@given(content_type=st.sampled_from(["text/plain", "application/xml", "text/json", "application/json-patch",
                                     "", "application/x-www-form-urlencoded"]),
       body=st.binary(max_size=100))
def test_writes_that_are_not_json_are_415(client, app, content_type, body):
    before = seeded(app)
    response = client.post("/api/engines", data=body, headers={"Content-Type": content_type})
    assert_refused(response, before, app)
    assert response.status_code == 415


@fuzz
@given(query=st.dictionaries(st.sampled_from(["q", "sort", "per_page", "after", "page", "x"]),
                             st.text(max_size=30), max_size=4))
def test_any_list_query_answers_200_or_a_400_that_says_why(client, app, query):
    before = seeded(app)
    response = client.get("/api/engines", query_string=query)
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert response.get_json()["fields"]
    assert all_engines(app) == before


@fuzz
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
       path=st.sampled_from(["/api/engines", "/api/engines/1", "/api/engines/0", "/api/engines/-1",
                             "/api/engines/99999999999999999999", "/api/engines/abc", "/api/health",
                             "/api/engines/1/", "/api/", "/api/engines.xml"]),
       body=st.none() | json_values)
def test_no_request_ever_gets_a_5xx(client, app, method, path, body):
    before = seeded(app)
    kwargs = {} if body is None else {"json": body}
    response = client.open(path, method=method, **kwargs)
    assert response.status_code < 500
    if response.status_code >= 400:
        assert all_engines(app) == before


@fuzz
@given(if_match=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24),
       method=st.sampled_from(["PATCH", "DELETE"]))
def test_any_if_match_header_gets_a_clear_answer(client, app, if_match, method):
    before = seeded(app)
    response = client.open("/api/engines/2", method=method, json={"thrust": 3} if method == "PATCH" else None,
                           headers={"If-Match": if_match})
    assert response.status_code in (200, 204, 400, 404, 409)
    if response.status_code >= 400:
        assert response.get_json()["error"]
        assert all_engines(app) == before
