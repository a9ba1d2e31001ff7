#!/usr/bin/env python3
"""Benchmark: the REST API's invoice list and get over a seeded database (issue 9).

A fresh database (SQLite in a temporary directory, or ``--postgres URL``: its own database
``bench_api_<pid>`` created on that server and dropped at the end) is brought to the newest
schema and seeded with N invoices (default 100,000) by SQLAlchemy Core bulk inserts: one message,
one document and one invoice per invoice, the invoice's canonical ``data`` built from one real
extracted e-invoice (``analyse`` on a fixture) with its number, seller (a few hundred vendors),
dates (12 months), amount, status, tags and ``created_at`` varied. Then ANALYZE.

The real app (``create_app``, API keys required, one ``invoices:read`` key, rate limit off) is
served by uvicorn in a thread on a loopback socket made with ``IPPROTO_TCP`` (as the daemon does;
without it every small response waits ~40 ms on Nagle), and one ``httpx.Client`` (keep-alive)
sends requests one after another, after warm-up requests:

* ``GET /v1/invoices`` with ``limit=20``, ``limit=100``, a ``status`` filter, a common and a
  rare status, a ``vendor`` filter, an amount range, a ``tag`` and a ``q`` search, and deep
  cursor pages (``starting_after`` a random invoice, then the next pages): p50/p95/p99;
* ``GET /v1/invoices/{id}`` for random ids: p50/p95/p99 and requests/s, and with
  ``--concurrency K`` also requests/s from K threads (one client each).

Every call is authenticated and audited (one audit-log insert per call), as in production. Not a
test: it prints figures (also written to bench/results/). The API's access log (one line per
request at ``info``) is off unless ``--log-info``.

    .venv/bin/python bench/api_latency.py [--invoices 100000] [--requests 2000] [--concurrency 4]
        [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailingest import logs
from mailingest.api.app import create_app
from mailingest.api.auth import create_key
from mailingest.config import ApiConfig, Config
from mailingest.pipeline.analyse import analyse
from mailingest.pipeline.dedupe import number_key
from mailingest.storage import db, tables  # noqa: F401 - registers every table

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures/einvoice/xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# status mix of a live ledger: most invoices through the workflow, some waiting for people
STATUSES = [
    ("approved", 30),
    ("exported", 25),
    ("validated", 20),
    ("needs_review", 15),
    ("extracted", 6),
    ("rejected", 3),
    ("failed", 1),
]
TAGS = ["travel", "it", "utilities", "marketing", "office", "urgent", "q-end", "capex"]
FORMS = ["GmbH", "AG", "Ltd", "SAS", "BV", "S.r.l.", "KG", "Oy"]
WORDS = ["Nord", "Alpen", "Rhein", "Hansa", "Delta", "Orbit", "Kontor", "Atlas", "Vega", "Polar",
         "Linde", "Falke", "Adler", "Quelle", "Brücke", "Stern", "Zenit", "Kraft", "Welle", "Forum"]  # fmt: skip
KINDS = ["Supplies", "Logistik", "Software", "Energie", "Bau", "Consulting", "Druck", "Facility"]


def sortable_id(prefix: str, at: datetime, rng: random.Random) -> str:
    """Like ``models.new_id`` (48-bit ms time + 80 random bits) but at a given time."""
    value = (int(at.timestamp() * 1000) << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(ALPHABET[rem])
    return f"{prefix}_{''.join(reversed(chars))}"


def template(fixture: Path) -> dict[str, Any]:
    analysis = analyse(fixture.read_bytes(), filename=fixture.name)
    if not analysis.invoices:
        raise SystemExit(f"{fixture}: no invoice extracted")
    return analysis.invoices[0].to_json_dict()


def vendors(count: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        name = f"{rng.choice(WORDS)} {rng.choice(KINDS)} {n:03d} {rng.choice(FORMS)}"
        out.append(
            {
                "id": f"ven_BENCH{n:05d}",
                "name": name,
                "name_key": name.lower().rsplit(" ", 1)[0],
                "vat_id": f"DE{100000000 + n * 7919 % 900000000:09d}",
            }
        )
    return out


def seed(engine: Engine, n: int, base: dict[str, Any], n_vendors: int, batch: int = 2000) -> dict[str, Any]:
    """N messages, documents and invoices by Core bulk inserts; returns what the requests pick from."""
    rng = random.Random(9)
    sellers = vendors(n_vendors, rng)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=365)
    span = (now - start).total_seconds()
    statuses = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    weighted = [1.0 / (i + 1) ** 0.8 for i in range(n_vendors)]  # a few big vendors, a long tail
    ids: list[str] = []
    msg_t, doc_t, inv_t = (SQLModel.metadata.tables[t] for t in ("messages", "documents", "invoices"))
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SQLModel.metadata.tables["vendors"]),
            [
                {
                    "id": v["id"],
                    "name": v["name"],
                    "name_key": v["name_key"],
                    "vat_ids": [v["vat_id"]],
                    "ibans": [],
                    "email_domains": [],
                    "trusted": False,
                    "lists": [],
                    "profile": {},
                    "version": 1,
                    "created_at": start,
                    "updated_at": start,
                }
                for v in sellers
            ],
        )
    t0 = time.perf_counter()
    for first in range(0, n, batch):
        msgs, docs, invs = [], [], []
        for i in range(first, min(first + batch, n)):
            # spread over 12 months in order, with jitter: several invoices share a second at times
            created = start + timedelta(seconds=span * i / n + rng.uniform(0, 30))
            created = created.replace(microsecond=rng.choice((0, 0, rng.randrange(1_000_000))))
            msg_id = sortable_id("msg", created, rng)
            doc_id = sortable_id("doc", created, rng)
            inv_id = sortable_id("inv", created, rng)
            seller = sellers[rng.choices(range(n_vendors), weighted)[0]]
            issued = (created - timedelta(days=rng.randrange(0, 6))).date()
            due = issued + timedelta(days=rng.choice((14, 30, 30, 45, 60)))
            net = Decimal(round(rng.lognormvariate(6.0, 1.2), 2)).quantize(Decimal("0.01"))
            tax = (net * Decimal("0.19")).quantize(Decimal("0.01"))
            gross = net + tax
            status = rng.choices(statuses, weights)[0]
            tags = rng.sample(TAGS, rng.choice((0, 0, 1, 1, 2)))
            number = f"{seller['name'][:3].upper()}-{issued.year}-{i:06d}"
            data = dict(base)
            data.update(
                id=inv_id,
                number=number,
                issue_date=issued.isoformat(),
                due_date=due.isoformat(),
                currency="EUR",
                status=status,
                vendor_id=seller["id"],
                seller={**base.get("seller", {}), "name": seller["name"], "vat_id": seller["vat_id"]},
                totals={
                    **base.get("totals", {}),
                    "line_net_total": str(net),
                    "tax_exclusive": str(net),
                    "tax_total": str(tax),
                    "tax_inclusive": str(gross),
                    "amount_due": str(gross),
                },
            )
            data.pop("prepaid", None)
            if tags:
                data["tags"] = tags
            msgs.append(
                {
                    "id": msg_id,
                    "source": "smtp",
                    "mailbox": None,
                    "message_id": f"<{msg_id}@bench>",
                    "sha256": f"{i:064x}",
                    "size": 24_000,
                    "from_addr": f"billing@{seller['name_key'].split()[0]}.example",
                    "subject": f"Invoice {number}",
                    "status": "processed",
                    "attempts": 1,
                    "received_at": created,
                    "processed_at": created,
                }
            )
            docs.append(
                {
                    "id": doc_id,
                    "message_id": msg_id,
                    "path": "2",
                    "filename": f"{number}.xml",
                    "content_type": "application/xml",
                    "kind": "ubl",
                    "size": 7000,
                    "sha256": f"{i + n:064x}",
                    "status": "extracted",
                    "extractor": "ubl",
                    "duration_ms": 4.0,
                    "created_at": created,
                }
            )
            invs.append(
                {
                    "id": inv_id,
                    "document_id": doc_id,
                    "message_id": msg_id,
                    "number": number,
                    "number_key": number_key(number),
                    "type": "invoice",
                    "seller_name": seller["name"],
                    "seller_vat_id": seller["vat_id"],
                    "issue_date": issued.isoformat(),
                    "currency": "EUR",
                    "amount_due": gross,
                    "status": status,
                    "valid": status not in ("needs_review", "failed"),
                    "duplicate_of": None,
                    "vendor_id": seller["id"],
                    "data": data,
                    "created_at": created,
                    "updated_at": created,
                }
            )
            ids.append(inv_id)
        with engine.begin() as conn:
            conn.execute(sa.insert(msg_t), msgs)
            conn.execute(sa.insert(doc_t), docs)
            conn.execute(sa.insert(inv_t), invs)
        done = min(first + batch, n)
        if done % 20_000 == 0 or done == n:
            print(f"  seeded {done:,} invoices in {time.perf_counter() - t0:.1f} s", flush=True)
    seeded = time.perf_counter() - t0
    t1 = time.perf_counter()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return {
        "ids": ids,
        "vendors": sellers,
        "seed_s": seeded,
        "analyze_s": time.perf_counter() - t1,
        "data_bytes": len(json.dumps(data)),
    }


class Server:
    """uvicorn in a thread on a loopback socket made with IPPROTO_TCP (TCP_NODELAY, as the daemon)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        )
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise SystemExit("the API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def quantiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_ms": round(q[49], 2),
        "p95_ms": round(q[94], 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(max(samples), 2),
    }


def timed(client: httpx.Client, path: str) -> tuple[float, dict[str, Any] | None]:
    t = time.perf_counter()
    response = client.get(path)
    elapsed = (time.perf_counter() - t) * 1000
    if response.status_code != 200:
        raise SystemExit(f"GET {path}: {response.status_code} {response.text[:300]}")
    return elapsed, response.json() if path.startswith("/v1/invoices?") else None


def measure(
    client: httpx.Client, name: str, paths: Callable[[], Iterator[str]], count: int, warmup: int
) -> dict[str, Any]:
    it = paths()
    for _ in range(warmup):
        timed(client, next(it))
    samples, rows = [], []
    for _ in range(count):
        ms, body = timed(client, next(it))
        samples.append(ms)
        if body is not None:
            rows.append(len(body["data"]))
    # requests/s over the timed requests only (the cursor scenario also fetches untimed pages)
    result = {
        "scenario": name,
        "requests": count,
        **quantiles(samples),
        "req_per_s": round(count / (sum(samples) / 1000), 1),
    }
    if rows:
        result["rows_per_page_mean"] = round(statistics.fmean(rows), 1)
    print(
        f"  {name:<34} p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f}  "
        f"p99 {result['p99_ms']:7.1f}  {result['req_per_s']:7.1f} req/s"
        + (f"  ({result['rows_per_page_mean']} rows/page)" if rows else ""),
        flush=True,
    )
    return result


def concurrent_gets(
    base_url: str, headers: dict[str, str], ids: list[str], total: int, k: int
) -> dict[str, Any]:
    """``total`` GET /v1/invoices/{id} from k threads, one keep-alive client each."""
    samples: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(k + 1)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        mine = []
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            for _ in range(20):
                timed(client, f"/v1/invoices/{rng.choice(ids)}")
            start.wait()
            for _ in range(total // k):
                ms, _body = timed(client, f"/v1/invoices/{rng.choice(ids)}")
                mine.append(ms)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=work, args=(100 + i,)) for i in range(k)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    result = {
        "scenario": f"get by id, {k} threads",
        "requests": len(samples),
        **quantiles(samples),
        "req_per_s": round(len(samples) / wall, 1),
    }
    print(
        f"  {result['scenario']:<34} p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f}  "
        f"p99 {result['p99_ms']:7.1f}  {result['req_per_s']:7.1f} req/s",
        flush=True,
    )
    return result


def scenarios(
    seeded: dict[str, Any], client: httpx.Client, rng: random.Random
) -> list[tuple[str, Callable[[], Iterator[str]]]]:
    ids: list[str] = seeded["ids"]
    sellers = seeded["vendors"]

    def repeat(path: str) -> Callable[[], Iterator[str]]:
        def gen() -> Iterator[str]:
            while True:
                yield path

        return gen

    def vendor_filter() -> Iterator[str]:
        while True:  # the number in one vendor's name ("Kontor Bau 123 GmbH"): that vendor's rows
            name = rng.choice(sellers)["name"]
            yield f"/v1/invoices?limit=20&vendor={name.split(' ', 3)[2]}"

    def amount_range() -> Iterator[str]:
        while True:  # a band of ±5 % around a typical amount
            centre = Decimal(round(rng.lognormvariate(6.0, 1.0) * 1.19, 2))
            low, high = (
                (centre * Decimal("0.95")).quantize(Decimal("0.01")),
                (centre * Decimal("1.05")).quantize(Decimal("0.01")),
            )
            yield f"/v1/invoices?limit=20&amount_min={low}&amount_max={high}"

    def deep_cursor() -> Iterator[str]:
        while True:  # start after a random invoice (anywhere in the year), then follow 4 pages
            after = rng.choice(ids)
            for _ in range(5):
                path = f"/v1/invoices?limit=20&starting_after={after}"
                yield path
                body = client.get(path).json()  # the next cursor (not timed: same query as the one timed)
                if not body["has_more"]:
                    break
                after = body["data"][-1]["id"]

    def number_search() -> Iterator[str]:
        while True:  # the end of one invoice's number: a search that matches one row
            yield f"/v1/invoices?limit=20&q=-{rng.randrange(len(ids)):06d}"

    def by_id() -> Iterator[str]:
        while True:
            yield f"/v1/invoices/{rng.choice(ids)}"

    return [
        ("list limit=20", repeat("/v1/invoices?limit=20")),
        ("list limit=100", repeat("/v1/invoices?limit=100")),
        ("list status=needs_review (15 %)", repeat("/v1/invoices?limit=20&status=needs_review")),
        ("list status=rejected,failed (4 %)", repeat("/v1/invoices?limit=20&status=rejected,failed")),
        ("list vendor=<name part>", vendor_filter),
        ("list amount range ±5 %", amount_range),
        ("list tag=urgent", repeat("/v1/invoices?limit=20&tag=urgent")),
        ("list q=<invoice number> (1 row)", number_search),
        ("list cursor pages (starting_after)", deep_cursor),
        ("get by id", by_id),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--invoices", type=int, default=100_000, help="invoices to seed (default 100,000)")
    parser.add_argument("--requests", type=int, default=2000, help="GET /v1/invoices/{id} requests")
    parser.add_argument("--list-requests", type=int, default=200, help="requests per list scenario")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before each scenario")
    parser.add_argument("--concurrency", type=int, default=0, help="also GETs by id from K threads")
    parser.add_argument("--vendors", type=int, default=300)
    parser.add_argument("--fixture", type=Path, default=FIXTURE, help="the e-invoice the data is built from")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="a PostgreSQL server URL (postgresql+psycopg://postgres@127.0.0.1/postgres); the"
        " benchmark creates and drops its own database bench_api_<pid> there",
    )
    parser.add_argument(
        "--log-info", action="store_true", help="keep the API's access log (one line per request) on"
    )
    args = parser.parse_args()
    logs.configure("info" if args.log_info else "warning", "json")

    tmp = tempfile.TemporaryDirectory(prefix="bench-api-")
    admin: Engine | None = None
    if args.postgres:
        admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"bench_api_{os.getpid()}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        url = sa.engine.make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp.name}/mailingest.db"
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        base = template(args.fixture)
        print(f"seeding {args.invoices:,} invoices ({engine.dialect.name}) ...", flush=True)
        seeded = seed(engine, args.invoices, base, args.vendors)
        print(
            f"seeded in {seeded['seed_s']:.1f} s ({args.invoices / seeded['seed_s']:,.0f} invoices/s),"
            f" ANALYZE {seeded['analyze_s']:.1f} s; invoice JSON ~{seeded['data_bytes']:,} bytes",
            flush=True,
        )
        with Session(engine) as session:
            _row, secret = create_key(session, name="bench", scopes=["invoices:read"])
            session.commit()
        config = Config(data_dir=Path(tmp.name), api=ApiConfig(auth="required", rate_limit="0"))
        app = create_app(engine, config=config, auth_mode="required")
        headers = {"Authorization": f"Bearer {secret}"}
        results = []
        with Server(app) as server:
            base_url = f"http://127.0.0.1:{server.port}"
            with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                if client.get("/v1/invoices", headers={"Authorization": "Bearer nope"}).status_code != 401:
                    raise SystemExit("the API answered without a valid key")
                rng = random.Random(1)
                for label, paths in scenarios(seeded, client, rng):
                    count = args.requests if label == "get by id" else args.list_requests
                    results.append(measure(client, label, paths, count, args.warmup))
            if args.concurrency > 1:
                results.append(
                    concurrent_gets(base_url, headers, seeded["ids"], args.requests, args.concurrency)
                )
    finally:
        engine.dispose()
        if admin is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS bench_api_{os.getpid()} WITH (FORCE)")
            admin.dispose()
        tmp.cleanup()

    result = {
        "date": date.today().isoformat(),
        "database": engine.dialect.name,
        "invoices": args.invoices,
        "vendors": args.vendors,
        "seed_s": round(seeded["seed_s"], 1),
        "seed_invoices_per_s": round(args.invoices / seeded["seed_s"]),
        "analyze_s": round(seeded["analyze_s"], 1),
        "invoice_json_bytes": seeded["data_bytes"],
        "auth": "API key (required), audited, rate limit off",
        "scenarios": results,
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"api_latency-{result['database']}-{args.invoices}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
