"""The baseline of bench/speed.py: the least a Flask app on waitress can do.

    .venv/bin/python bench/bare_flask.py --port 0

One route, `GET /`, answers a small JSON object without touching a database,
served by waitress with 8 threads as Engines is. Each Engines figure of the
bench is a ratio to this one, measured in the same run on the same machine,
so the ratio says what Engines' own work costs. It prints the URL it serves
on one line, as `engines.py --serve` does, and stops on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys

from flask import Flask
from waitress import create_server

app = Flask(__name__)


@app.get("/")
def hello():
    return {"hello": "world"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    args = parser.parse_args()
    server = create_server(app, host="127.0.0.1", port=args.port, threads=8, ident="bare-flask")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"bare Flask is running at http://127.0.0.1:{server.effective_port}/", flush=True)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
