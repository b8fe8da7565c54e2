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
    assert "Delete “<bdi>Main</bdi>”?" in page and "restore it later from Recently deleted" in page
    assert len(all_engines(app)) == 2
    response = form_post(client, "/engines/1/delete", {}, follow_redirects=True)
    assert "Deleted “Main”." in response.get_data(as_text=True)
    assert all_engines(app) == [(2, "Spare", 2)]


def test_a_delete_confirmed_on_a_page_that_went_stale_deletes_nothing(client, app):
    """The confirmation names an engine as it was when the page was shown:
    if it changed since, nothing is deleted, and the confirmation asks
    again about the engine as it is now."""
    add_engines(app, [{"title": "Main", "thrust": 1}])
    page = client.get("/engines/1/delete").get_data(as_text=True)
    assert 'name="version" value="1"' in page
    client.patch("/api/engines/1", json={"title": "Renamed elsewhere"})
    response = form_post(client, "/engines/1/delete", {"version": "1"})
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    assert "Someone else changed this engine since you asked to delete it." in page and "Nothing was deleted" in page
    assert "Delete “<bdi>Renamed elsewhere</bdi>”?" in page and 'name="version" value="2"' in page
    assert all_engines(app) == [(1, "Renamed elsewhere", 1)]
    response = form_post(client, "/engines/1/delete", {"version": "two"})
    assert response.status_code == 400 and "Version must be a whole number" in response.get_data(as_text=True)
    assert "Someone else changed" not in client.get("/engines/1/delete").get_data(as_text=True)
    response = form_post(client, "/engines/1/delete", {"version": "2"}, follow_redirects=True)
    assert "Deleted “Renamed elsewhere”." in response.get_data(as_text=True)
    assert all_engines(app) == []


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
    assert ">First page</a>" in second
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


def edit_form(page: str) -> dict:
    """The hidden fields of an edit page's form, as a browser would post them."""
    fields = "version|base_title|base_thrust|choosing|next"
    return dict(re.findall(rf'<input type="hidden" name="({fields})" value="([^"]*)">', page))


def test_an_edit_merges_by_itself_a_field_only_someone_else_changed(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    form = edit_form(client.get("/engines/1/edit").get_data(as_text=True))
    assert form == {"next": "/", "version": "1", "base_title": "Main", "base_thrust": "1"}
    client.patch("/api/engines/1", json={"thrust": 7000})  # they change the thrust; I change only the title
    response = form_post(client, "/engines/1/edit", {**form, "title": "Mine", "thrust": "1"}, follow_redirects=True)
    assert "Saved “Mine”. Their change of thrust is kept." in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Mine", 7000)]


def test_a_field_both_changed_is_a_choice_of_theirs_or_mine_and_nothing_is_saved_until_chosen(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    form = edit_form(client.get("/engines/1/edit").get_data(as_text=True))
    client.patch("/api/engines/1", json={"title": "Theirs", "thrust": 7000})
    response = form_post(client, "/engines/1/edit", {**form, "title": "Mine", "thrust": "1"})
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    assert "Someone else changed this engine while you were editing it." in page
    assert 'value="Theirs" id="title-theirs" autofocus>' in page and 'value="Mine" id="title-mine">' in page
    assert 'id="thrust" name="thrust" type="text" value="7,000"' in page  # only they changed it: theirs
    again = edit_form(page)
    assert again == {"next": "/", "version": "2", "base_title": "Theirs", "base_thrust": "7000", "choosing": "title"}
    assert all_engines(app) == [(1, "Theirs", 7000)]

    unchosen = form_post(client, "/engines/1/edit", {**again, "thrust": "7,000"})
    assert unchosen.status_code == 400
    assert '<p class="error" id="title-error">Choose their title or yours.</p>' in unchosen.get_data(as_text=True)
    response = form_post(client, "/engines/1/edit", {**again, "title": "Mine", "thrust": "7,000"},
                         follow_redirects=True)
    assert "Saved “Mine”." in response.get_data(as_text=True)
    assert all_engines(app) == [(1, "Mine", 7000)]


def test_an_edit_without_the_values_it_started_from_asks_about_every_field_that_differs(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    client.patch("/api/engines/1", json={"title": "Theirs", "thrust": 7000})
    response = form_post(client, "/engines/1/edit", {"title": "Mine", "thrust": "7000", "version": "1"})
    assert response.status_code == 409
    assert edit_form(response.get_data(as_text=True))["choosing"] == "title"
    assert all_engines(app) == [(1, "Theirs", 7000)]


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


def heading(html: str) -> str:
    return re.search(r'<h2 id="list-heading">([^<]*)</h2>', html).group(1)


def link(html: str, name: str) -> str:
    return re.search(rf'<a href="([^"]+)"[^>]* id="{name}-top"', html).group(1).replace("&amp;", "&")


def test_each_page_says_where_it_is_in_the_list_and_the_tab_says_it_too(client, app):
    add_engines(app, [{"title": f"Engine {i:03d}", "thrust": i} for i in range(1, 121)])
    first = client.get("/").get_data(as_text=True)
    assert heading(first) == "1–50 of 120 engines"
    assert "<title>1–50 of 120 engines · Engines</title>" in first
    assert '<span class="first inactive">First page</span>' in first and 'id="last-top"' in first
    second = client.get(link(first, "next")).get_data(as_text=True)
    assert heading(second) == "51–100 of 120 engines"
    last = client.get(link(second, "last")).get_data(as_text=True)
    assert heading(last) == "71–120 of 120 engines"  # the last 50, counted from the end
    assert '<span class="last inactive">Last page</span>' in last
    back = client.get(link(last, "prev")).get_data(as_text=True)
    assert heading(back) == "21–70 of 120 engines"
    assert heading(client.get(link(back, "first")).get_data(as_text=True)) == "1–50 of 120 engines"
    # Two pagers, at the top and the bottom, each with its own name.
    assert 'aria-label="Pages, top"' in first and 'aria-label="Pages, bottom"' in first


def test_a_position_is_exact_at_either_end_and_kept_by_the_link_in_between(client, app):
    add_engines(app, [{"title": f"Engine {i:03d}", "thrust": i} for i in range(1, 121)])
    second = client.get(link(client.get("/").get_data(as_text=True), "next")).get_data(as_text=True)
    add_engines(app, [{"title": "Added meanwhile", "thrust": 0}])
    # Added at the end: the page in the middle keeps its numbers, the end counts it.
    assert heading(client.get(link(second, "next")).get_data(as_text=True)) == "101–121 of 121 engines"
    without_position = re.sub(r"&from=\d+", "", link(second, "next")).replace("after", "after", 1)
    middle = client.get(without_position.replace("per_page", "per_page").replace("&from", "")).get_data(as_text=True)
    assert heading(middle) == "101–121 of 121 engines"
    cursor_only = client.get("/?per_page=10&" + link(second, "next").split("?", 1)[1].split("&from")[0])
    assert heading(cursor_only.get_data(as_text=True)) == "10 shown of 121 engines"


def test_the_page_size_menu_and_the_column_headers_sort_and_size_the_list(client, app):
    add_engines(app, [{"title": t, "thrust": n} for t, n in [("beta", 5), ("Alpha", 50), ("gamma", 1)]])
    page = client.get("/?per_page=2").get_data(as_text=True)
    assert heading(page) == "1–2 of 3 engines"
    assert '<option value="2" selected>2 a page</option>' in page
    by_title = re.search(r'<a href="([^"]+)" id="sort-title"', page).group(1).replace("&amp;", "&")
    assert by_title == "/?sort=title&per_page=2"
    sorted_page = client.get(by_title).get_data(as_text=True)
    assert 'aria-sort="ascending"' in sorted_page
    assert re.findall(r'<tr id="engine-(\d+)"', sorted_page) == ["2", "1"]
    again = re.search(r'<a href="([^"]+)" id="sort-title"', sorted_page).group(1).replace("&amp;", "&")
    assert again == "/?sort=-title&per_page=2"
    thrust_first = re.search(r'<a href="([^"]+)" id="sort-thrust"', page).group(1).replace("&amp;", "&")
    assert thrust_first == "/?sort=-thrust&per_page=2"  # the strongest first


@pytest.mark.parametrize("typed, stored", [
    ("1,200", 1200), ("1 200", 1200), ("1\u00a0200", 1200), ("1\u202f200", 1200), ("1\u2009200", 1200),
    ("12,345,678", 12_345_678), (" 2,147,483,647 ", 2_147_483_647), ("+1,000", 1000),
])
def test_a_thrust_may_be_typed_as_the_list_shows_it(client, app, typed, stored):
    assert form_post(client, "/engines", {"title": "Main", "thrust": typed}).status_code == 302
    assert all_engines(app) == [(1, "Main", stored)]
    assert form_post(client, "/engines/1/thrust", {"thrust": typed}).status_code == 302
    assert form_post(client, "/engines/1/edit", {"title": "Main", "thrust": typed}).status_code == 302
    assert all_engines(app) == [(1, "Main", stored)]


@pytest.mark.parametrize("typed", ["1,2,3", "1,20", "١٢", "1,200 300", "1.200", ",200", "1200,", "1,,200", "1_200"])
def test_a_thrust_with_separators_in_the_wrong_places_is_a_400_naming_the_field(client, app, typed):
    response = form_post(client, "/engines", {"title": "Main", "thrust": typed})
    assert response.status_code == 400
    assert '<p class="error" id="thrust-error">Thrust must be a whole number.</p>' in response.get_data(as_text=True)
    response = client.post("/engines/1/thrust", data={"csrf_token": csrf_token(client), "thrust": typed},
                           headers={"Accept": "application/json"})
    assert response.status_code in (400, 404)
    assert all_engines(app) == []


def test_an_import_reads_thousands_separators_in_number_cells(client, app):
    with app.app_context():
        assert engines.import_engines(__import__("io").BytesIO(b'title,thrust\nMain,"1,200"\nSpare,1 500\n')) == 2
    assert all_engines(app) == [(1, "Main", 1200), (2, "Spare", 1500)]


def test_the_thrust_box_answers_the_page_s_script_in_json(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    token = csrf_token(client)
    saved = client.post("/engines/1/thrust", data={"csrf_token": token, "thrust": "7,500"},
                        headers={"Accept": "application/json"})
    assert saved.status_code == 200
    assert (saved.get_json()["thrust"], saved.get_json()["shown"]) == (7500, "7,500")
    bad = client.post("/engines/1/thrust", data={"csrf_token": token, "thrust": "-1"},
                      headers={"Accept": "application/json"})
    assert bad.status_code == 400
    assert bad.get_json()["fields"] == {"thrust": "Thrust must be between 0 and 2,147,483,647."}


def test_search_matches_are_marked_in_titles_ignoring_case_as_search_does(client, app):
    add_engines(app, [{"title": "Straße 9", "thrust": 1}, {"title": "MAIN main", "thrust": 2},
                      {"title": "<b>x</b>", "thrust": 3}])
    assert ">Stra<mark>ße</mark> 9</a>" in client.get("/?q=SSE").get_data(as_text=True)
    assert "><mark>MAIN</mark> <mark>main</mark></a>" in client.get("/?q=main").get_data(as_text=True)
    assert ">&lt;<mark>b&gt;</mark>x&lt;/<mark>b&gt;</mark></a>" in client.get("/?q=b>").get_data(as_text=True)


@pytest.mark.parametrize("sort, shown", [
    ("id", "/?before=&new=121#engine-121"),
    ("-id", "/?sort=-id&new=121#engine-121"),
    ("title", "/?sort=title&after={cursor}&new=121#engine-121"),
])
def test_a_new_engine_is_shown_where_it_lands_highlighted(client, app, sort, shown):
    add_engines(app, [{"title": f"Engine {i:03d}", "thrust": i} for i in range(1, 121)])
    response = form_post(client, "/engines", {"title": "Engine 050½", "thrust": "5", "next": f"/?sort={sort}"})
    cursor = base64.urlsafe_b64encode('["Engine 050½", 120]'.encode()).decode().rstrip("=")
    assert response.headers["Location"] == shown.format(cursor=cursor)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert '<tr id="engine-121" class="new">' in page
    if sort == "id":
        assert heading(page) == "72–121 of 121 engines"
    if sort == "title":
        assert re.findall(r'<tr id="engine-(\d+)"', page)[:2] == ["121", "51"]


def test_a_search_the_new_engine_does_not_match_is_cleared(client, app):
    response = form_post(client, "/engines", {"title": "Main", "next": "/?q=vernier&sort=-id"})
    assert response.headers["Location"] == "/?sort=-id&new=1#engine-1"
