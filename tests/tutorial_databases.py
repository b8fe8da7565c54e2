"""Databases made by the tutorial Engines grew from, with that tutorial's own code.

Engines began as a Flask-SQLAlchemy tutorial whose model is below, verbatim;
its `db.create_all()` made the table, and its users added engines through the
ORM. Such a table has no AUTOINCREMENT (so no sqlite_sequence), and its title
and thrust are nullable; SQLite also keeps a title of any length and a thrust
of any type. Engines must open every database that code can make, with every
row: this script makes them, so that the tests open data Engines did not make.

    python tests/tutorial_databases.py sqlite:////tmp/engines.sqlite3 [every | postgresql | COUNT | JSON]

makes one with every kind of value SQLite keeps (`EVERY_KIND_OF_ENGINE`, the
default), every kind PostgreSQL keeps (`postgresql`), COUNT ordinary engines,
or the engines of a JSON list (each the keyword arguments of Engine). The
tutorial's own URI, PostgreSQL, works too (`postgresql+psycopg://user@host/db`).
The tests run it in a process of its own, apart from Engines' code, as the
tutorial ran.
"""

from __future__ import annotations

import json
import sys

from flask import Flask
from flask_sqlalchemy import SQLAlchemy


def make_tutorial_database(uri: str, engines: list[dict]) -> None:
    """Create the tutorial's table in the database at `uri` and add
    `engines` through its model, each given as the keyword arguments of
    Engine(...). A value the ORM would replace by the column default on
    insert (thrust=None) is then set as given, as a later edit would."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    db = SQLAlchemy(app)

    # The tutorial's model, verbatim.
    class Engine(db.Model):
        id = db.Column(db.Integer, primary_key=True, autoincrement=True)
        title = db.Column(db.String(128))
        thrust = db.Column(db.Integer, default=0)

    with app.app_context():
        db.create_all()
        added = [Engine(**fields) for fields in engines]
        db.session.add_all(added)
        db.session.flush()
        for engine, fields in zip(added, engines, strict=True):
            for name, value in fields.items():
                setattr(engine, name, value)
        db.session.commit()
        db.engine.dispose()


# Every kind of value the model accepts, on SQLite. PostgreSQL keeps fewer:
# POSTGRESQL_KINDS below are the ones it accepts.
EVERY_KIND_OF_ENGINE = [
    {"title": "Main", "thrust": 1200},
    {"title": "No thrust given"},
    {"title": None, "thrust": None},
    {"title": ""},
    {"title": "   "},
    {"title": "x" * 128, "thrust": 2_147_483_647},
    {"title": "y" * 300},
    {"title": "Tab\there, line\nbreak"},
    {"title": "\x00NUL first"},
    {"title": "bell\x07 and DEL\x7f and NEL\x85"},
    {"title": "line\u2028separator"},
    {"title": "  padded  "},
    {"title": "Ракета-носитель 🚀 火箭 محرك"},
    {"title": 12345},
    {"title": b"\xff\xfe not UTF-8"},
    {"title": "negative", "thrust": -1},
    {"title": "far below", "thrust": -(2**63)},
    {"title": "just above the API's range", "thrust": 2**31},
    {"title": "far above", "thrust": 2**63 - 1},
    {"title": "a fraction", "thrust": 1.5},
    {"title": "a whole float", "thrust": 2.0},
    {"title": "infinity", "thrust": float("inf")},
    {"title": "number as text", "thrust": "42"},
    {"title": "text", "thrust": "abc"},
    {"title": "true", "thrust": True},
    {"title": "bytes", "thrust": b"\x01"},
    {"id": 0, "title": "id zero"},
    {"id": -5, "title": "negative id"},
    {"id": 2**31, "title": "id past the API's range"},
    {"id": 2**62, "title": "huge id"},
]

POSTGRESQL_KINDS = [
    {"title": "Main", "thrust": 1200},
    {"title": "No thrust given"},
    {"title": None, "thrust": None},
    {"title": ""},
    {"title": "   "},
    {"title": "x" * 128, "thrust": 2_147_483_647},
    {"title": "Tab\there, line\nbreak"},
    {"title": "bell\x07 and DEL\x7f and NEL\x85"},
    {"title": "  padded  "},
    {"title": "Ракета-носитель 🚀 火箭 محرك"},
    {"title": "negative", "thrust": -1},
    {"title": "the lowest", "thrust": -(2**31)},
    {"title": "number as text", "thrust": "42"},
    {"id": 0, "title": "id zero"},
    {"id": -5, "title": "negative id"},
]


def plain_engines(count: int) -> list[dict]:
    """`count` engines as a tutorial user would add them: a title and a thrust."""
    return [{"title": f"Engine {i} 🚀", "thrust": i * 1000} for i in range(1, count + 1)]


if __name__ == "__main__":
    uri, kinds = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "every"
    if kinds.startswith("["):
        engines = json.loads(kinds)
    else:
        kinds_by_name = {"every": EVERY_KIND_OF_ENGINE, "postgresql": POSTGRESQL_KINDS}
        engines = kinds_by_name.get(kinds) or plain_engines(int(kinds))
    make_tutorial_database(uri, engines)
    print(f"Made {uri} with {len(engines)} engines.")
