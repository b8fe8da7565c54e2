"""Run inside `engines --window` as its WINDOW_TEST_SCRIPT, with `window`:
say when the page has loaded (loaded.json in $WINDOW_TEST_OUTPUT) and leave
the window open, for a test that stops Engines some other way."""

import json
import os
from pathlib import Path


def report(name: str, data: dict) -> None:
    """Write data as JSON into $WINDOW_TEST_OUTPUT/name, all at once."""
    path = Path(os.environ["WINDOW_TEST_OUTPUT"]) / name
    path.with_suffix(".tmp").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)


loaded = window.events.loaded.wait(60)
report("loaded.json", {"loaded": loaded})
