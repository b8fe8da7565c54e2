"""Run inside `engines --window` as its WINDOW_TEST_SCRIPT, with `window`:
add an engine as a person would (type its title and thrust, click "Add
engine"), read the message the page shows, then close the window.

Writes added.json into $WINDOW_TEST_OUTPUT.
"""

import json
import os
from pathlib import Path


def report(name: str, data: dict) -> None:
    """Write data as JSON into $WINDOW_TEST_OUTPUT/name, all at once."""
    path = Path(os.environ["WINDOW_TEST_OUTPUT"]) / name
    path.with_suffix(".tmp").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)


def read(expression: str):
    """The value of a JavaScript expression in the page. Not evaluate_js:
    pywebview runs that through eval(), which the app's Content-Security-Policy
    (no 'unsafe-eval') rightly refuses; run_js is not subject to it."""
    return json.loads(window.run_js(f"JSON.stringify({expression})"))


TITLE = "Ракета-носитель"
THRUST = "1200"

seen = {}
try:
    seen["loaded"] = window.events.loaded.wait(60)
    window.events.loaded.clear()
    window.run_js(f"""
        document.querySelector('#title').value = {json.dumps(TITLE)};
        document.querySelector('#thrust').value = {json.dumps(THRUST)};
        [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Add engine').click();
    """)
    seen["reloaded"] = window.events.loaded.wait(60)
    seen["message"] = read("document.querySelector('.message').textContent.trim()")
    seen["listed"] = read("document.querySelector('table.engines td.title').textContent.trim()")
finally:
    report("added.json", seen)
    window.destroy()
