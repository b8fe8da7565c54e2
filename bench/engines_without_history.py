"""The baseline of the bench's PATCH with history: Engines with no history record written.

    .venv/bin/python bench/engines_without_history.py --serve --port 0 --instance DIR

Engines as `engines.py` runs it, with the one function that writes a history
record of a change (`record_change`) replaced by one that writes nothing, so
that a PATCH costs what it did before history was kept. bench/speed.py
measures the same random PATCH against it and against Engines itself, in the
same run, on copies of the same database: the ratio is what keeping every
change costs a write. This is a measuring tool, never a way to run Engines.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engines  # noqa: E402  (after the path: engines.py is one folder up)


def record_nothing(*args, **kwargs) -> None:
    return None


if __name__ == "__main__":
    engines.record_change = record_nothing
    sys.exit(engines.main())
