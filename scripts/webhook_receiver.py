#!/usr/bin/env python3
"""A tiny webhook receiver for trying mailingest out: prints each event and checks its
Standard Webhooks signature. Usage:

    WEBHOOK_SECRET=whsec_... .venv/bin/python scripts/webhook_receiver.py --port 9000
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mailingest.connectors.webhook import verify


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET", "")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            ok = bool(secret) and verify(secret, headers, body)
            event = json.loads(body)
            data = event.get("data", {})
            print(
                f"{event['type']:<28} id={headers.get('webhook-id')} signature={'valid' if ok else 'INVALID'}"
                f"  number={data.get('number')} amount_due={data.get('totals', {}).get('amount_due')}"
                f" {data.get('currency', '')} status={data.get('status')}",
                flush=True,
            )
            self.send_response(204 if ok else 401)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    print(
        f"listening on http://127.0.0.1:{args.port}/ "
        f"(signature check {'on' if secret else 'OFF: set WEBHOOK_SECRET'})"
    )
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
