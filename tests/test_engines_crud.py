"""The page: what a person does in the browser, through real form posts."""

from __future__ import annotations

import base64
import re

import pytest

import engines
from conftest import add_engines, all_engines, csrf_token


def form_post(client, url, data, **kwargs):
    return client.post(url, data={"csrf_token": csrf_token(client), **data}, **kwargs)


def test_empty_list_invites_the_first_engine(client):
    page = client.get("/").get_data(as_text=True)
    assert "No engines yet" in page
    assert "Add an engine" in page


def test_every_page_shows_the_version_in_its_footer(client):
    footer = f'<footer class="footer">Engines {engines.__version__}</footer>'
    for url in ("/", "/engines/1/edit"):  # the list, and an error page (no engine 1)
        assert footer in client.get(url).get_data(as_text=True)


def test_add_an_engine_from_the_page(client, app):
    response = form_post(client, "/engines", {"title": " Main ", "thrust": "1500"}, follow_redirects=True)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Added “Main”." in page
    assert re.search(r">\s*Main\s*</a>", page)
    assert "1,500" in page
    assert all_engines(app) == [(1, "Main", 1500)]


def test_thrust_left_empty_is_zero(client, app):
    form_post(client, "/engines", {"title": "Vernier", "thrust": ""})
    assert all_engines(app) == [(1, "Vernier", 0)]


@pytest.mark.parametrize("title, thrust, field, message", [
    ("", "5", "title", "Title is required."),
    ("x" * 129, "5", "title", "at most 128 characters"),
    ("a\x00b", "5", "title", "control characters"),
    ("Main", "-1", "thrust", "between 0 and 2,147,483,647"),
    ("Main", "2147483648", "thrust", "between 0 and 2,147,483,647"),
    ("Main", "1.5", "thrust", "whole number"),
    ("Main", "lots", "thrust", "whole number"),
    ("Main", "9" * 40, "thrust", "whole number"),
])
def test_a_bad_field_is_shown_beside_it_and_the_input_is_kept(client, app, title, thrust, field, message):
    response = form_post(client, "/engines", {"title": title, "thrust": thrust})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', page)
    assert error and message in error.group(1)
    kept = title.replace("\x00", "") if field == "thrust" else None
    if kept:
        assert f'value="{kept}"' in page
    if field == "title" and title == "":
        assert 'value="5"' in page
    assert all_engines(app) == []


def test_edit_an_engine(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    page = client.get("/engines/1/edit").get_data(as_text=True)
    assert 'value="Main"' in page and 'value="1"' in page
    response = form_post(client, "/engines/1/edit", {"title": "Main engine", "thrust": "20"}, follow_redirects=True)
    assert "Saved “Main engine”." in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Main engine", 20)]


def test_a_bad_edit_keeps_what_was_typed_and_changes_nothing(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    response = form_post(client, "/engines/1/edit", {"title": "Renamed", "thrust": "much"})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'value="Renamed"' in page and 'value="much"' in page
    assert "Thrust must be a whole number." in page
    assert all_engines(app) == [(1, "Main", 1)]


def test_quick_thrust_from_the_list(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    response = form_post(client, "/engines/1/thrust", {"thrust": "750", "next": "/?sort=-thrust"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/?sort=-thrust"
    assert all_engines(app) == [(1, "Main", 750)]


def test_quick_thrust_that_is_bad_says_why_and_changes_nothing(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    response = form_post(client, "/engines/1/thrust", {"thrust": "-4"}, follow_redirects=True)
    assert "between 0 and 2,147,483,647" in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Main", 1)]


def test_delete_asks_first_then_deletes(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}, {"title": "Spare", "thrust": 2}])
    page = client.get("/engines/1/delete").get_data(as_text=True)
    assert "Delete “Main”?" in page and "restore it later from Recently deleted" in page
    assert len(all_engines(app)) == 2
    response = form_post(client, "/engines/1/delete", {}, follow_redirects=True)
    assert "Deleted “Main”." in response.get_data(as_text=True)
    assert all_engines(app) == [(2, "Spare", 2)]


@pytest.mark.parametrize("url", ["/engines/9/edit", "/engines/9/delete"])
def test_unknown_engine_is_a_404_page(client, url):
    response = client.get(url)
    assert response.status_code == 404
    assert "Engine 9 was not found." in response.get_data(as_text=True)
    assert response.mimetype == "text/html"


@pytest.mark.parametrize("url, data", [
    ("/engines", {"title": "Main"}),
    ("/engines/1/edit", {"title": "Hijacked", "thrust": "1"}),
    ("/engines/1/thrust", {"thrust": "9"}),
    ("/engines/1/delete", {}),
])
def test_a_form_post_without_its_csrf_token_is_refused(client, app, url, data):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    response = client.post(url, data=data)
    assert response.status_code == 400
    assert "reload the page" in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Main", 1)]


def test_an_html_looking_title_is_shown_escaped(client, app):
    add_engines(app, [{"title": "<b>x</b>", "thrust": 1}, {"title": '"><script>alert(1)</script>', "thrust": 2}])
    for url in ["/", "/?q=%3Cb%3E", "/engines/1/edit", "/engines/1/delete", "/engines/2/edit"]:
        page = client.get(url).get_data(as_text=True)
        assert "<b>x</b>" not in page
        assert "<script>alert" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in client.get("/").get_data(as_text=True)


def test_search_sort_and_pages_in_the_list(client, app):
    add_engines(app, [{"title": f"Engine {i:03d}", "thrust": i} for i in range(120)]
                + [{"title": "Ракета-носитель", "thrust": 7}])
    page = client.get("/?q=ракета").get_data(as_text=True)
    assert "Ракета-носитель" in page and "Engine 001" not in page
    assert "1 matching" in page
    page = client.get("/?sort=-thrust").get_data(as_text=True)
    assert page.index("Engine 119") < page.index("Engine 118")
    next_link = re.search(r'href="([^"]+)" rel="next"', page).group(1).replace("&amp;", "&")
    second = client.get(next_link).get_data(as_text=True)
    assert "Engine 069" in second and "Engine 119" not in second
    assert "« First" in second
    prev_link = re.search(r'href="([^"]+)" rel="prev"', second).group(1).replace("&amp;", "&")
    rows = lambda html: re.findall(r'<tr id="engine-(\d+)"', html)  # noqa: E731
    assert rows(client.get(prev_link).get_data(as_text=True)) == rows(page)
    assert len(rows(page)) == 50
    assert 'rel="prev"' not in page


def test_a_bad_list_parameter_is_a_400_page_naming_it(client):
    response = client.get("/?sort=colour")
    assert response.status_code == 400
    assert "<strong>sort</strong>: Sort by one of id, title, thrust" in response.get_data(as_text=True)
    assert "<strong>colour</strong>: Unknown parameter." in client.get("/?colour=red").get_data(as_text=True)
    assert "<strong>after</strong>: Not a valid page cursor." in client.get("/?after=!!!").get_data(as_text=True)


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)",
])
def test_after_a_form_the_app_never_redirects_to_another_site(client, app, target):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    response = form_post(client, "/engines/1/thrust", {"thrust": "3", "next": target})
    assert response.headers["Location"] == "/"
    page = client.get("/engines/1/edit", query_string={"next": target}).get_data(as_text=True)
    assert target.replace("&", "&amp;") not in page


@pytest.mark.parametrize("target", [
    "/\r\nSet-Cookie: x=y", "/?a=1\nb", "/\t/evil.example", "/x\x00y", "/\u2028", "//[", "/" + "x" * 3000,
])
@pytest.mark.parametrize("url, data, after", [
    ("/engines/1/thrust", {"thrust": "3"}, [(1, "Main", 3)]),
    ("/engines/1/edit", {"title": "Renamed", "thrust": "4"}, [(1, "Renamed", 4)]),
    ("/engines/1/delete", {}, []),
])
def test_a_next_url_that_is_not_a_plain_local_path_returns_to_the_list(client, app, target, url, data, after):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    assert client.get(url.replace("thrust", "edit"), query_string={"next": target}).status_code == 200
    response = form_post(client, url, {**data, "next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert all_engines(app) == after


def test_a_forged_page_cursor_is_a_400_page_naming_it(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    for sort, raw in [("title", br'["\ud800", 1]'), ("id", b"[" * 3000)]:
        forged = base64.urlsafe_b64encode(raw).decode()
        response = client.get("/", query_string={"sort": sort, "after": forged})
        assert response.status_code == 400
        assert "Not a valid page cursor." in response.get_data(as_text=True)


def hidden_version(page: str) -> str:
    return re.search(r'<input type="hidden" name="version" value="([^"]*)">', page).group(1)


def test_the_edit_page_carries_the_version_it_shows(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    assert hidden_version(client.get("/engines/1/edit").get_data(as_text=True)) == "1"
    form_post(client, "/engines/1/edit", {"title": "Main", "thrust": "2", "version": "1"})
    assert hidden_version(client.get("/engines/1/edit").get_data(as_text=True)) == "2"


def test_an_edit_of_a_changed_engine_shows_both_and_replaces_theirs_only_when_saved_again(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    version = hidden_version(client.get("/engines/1/edit").get_data(as_text=True))
    # Meanwhile, someone else renames it and sets its thrust.
    client.patch("/api/engines/1", json={"title": "Theirs", "thrust": 7000})

    response = form_post(client, "/engines/1/edit", {"title": "Mine", "thrust": "1", "version": version})
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    assert "Someone else changed this engine while you were editing it." in page
    rows = re.findall(r'<tr( class="changed")?><th scope="row">(\w+)</th><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td>',
                      page)
    assert rows == [(' class="changed"', "Title", "Theirs", "Mine"), (' class="changed"', "Thrust", "7,000", "1")]
    assert 'value="Mine"' in page  # what I typed is kept
    assert hidden_version(page) == "2"
    assert all_engines(app) == [(1, "Theirs", 7000)]

    response = form_post(client, "/engines/1/edit", {"title": "Mine", "thrust": "1", "version": "2"},
                         follow_redirects=True)
    assert "Saved “Mine”." in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Mine", 1)]


def test_an_edit_form_with_a_broken_version_says_to_reload_and_changes_nothing(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    response = form_post(client, "/engines/1/edit", {"title": "Mine", "thrust": "1", "version": "seven"})
    assert response.status_code == 400
    assert "This form is out of date" in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Main", 1)]


def test_the_page_offers_export_import_and_backups(client):
    page = client.get("/").get_data(as_text=True)
    for offer in ("Export CSV", "Export JSON", 'enctype="multipart/form-data"', "Back up now",
                  "Download a backup", "backups"):
        assert offer in page



def test_page_links_keep_a_page_size_that_differs_from_the_configured_one(tmp_path):
    app = engines.create_app({"TESTING": True, "PER_PAGE": 3}, instance_path=tmp_path / "i")
    add_engines(app, [{"title": f"Engine {i:03d}", "thrust": i} for i in range(60)])
    client = app.test_client()
    page = client.get("/?per_page=50").get_data(as_text=True)
    next_link = re.search(r'href="([^"]+)" rel="next"', page).group(1)
    assert "per_page=50" in next_link
    page = client.get("/").get_data(as_text=True)
    assert "per_page" not in re.search(r'href="([^"]+)" rel="next"', page).group(1)
