"""Profile service lookups: p50/p99 at a fixed request rate over an index of N profiles, and the index's disk.

    python -m bench.profile_service --profiles 1000000 --rate 1000 --seconds 20
    python -m bench.profile_service --staleness 40 [--epoch-seconds 2]

`--staleness N`: end to end instead, on the embedded broker: the real flow (its default 2 s epochs) and
`nextclick serve` (a child process) running, N orders of new customers produced about 1.1 s apart (so
they fall at every phase of an epoch), each timed from the producer's acknowledgement to the service's
first 200 for it (polled every 5 ms); the bound is one epoch plus a second.

Builds the service's index (operators/io/view_index.py) from synthetic view records (three identifiers
each, a record of the size the engine-equivalence workload gives), then runs the HTTP app
(flows/serve.py, with its auth and metrics middleware) in a child process and sends requests from this
one at a fixed rate (open loop: a late response does not delay the next request), by random
identifier types, 1 in 10 unknown (404). Latency is measured by the client, so it includes its own
overhead on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from nextclick.operators.identity.pseudonyms import pseudonymize

SECRET = b"bench-secret"
TOKEN = "bench-token"
TYPES = ("customer", "email", "cookie")


def record(n: int, now: int) -> tuple[bytes, bytes]:
    keys = {t: pseudonymize(t, f"{t}-{n}", SECRET) for t in TYPES}
    view_key = f"linked_customer/{keys['customer']}"
    body = {"schema": "profile.v1", "profile_key": view_key, "version": 12, "as_of": now, "first_seen": now - 9e8,
            "last_seen": now, "attributes": {"orders": 2, "lifetime_value": 180.5, "average_order_value": 90.25,
                                             "first_purchase": now - 8e8, "last_purchase": now - 1e6,
                                             "days_since_last_purchase": 0, "days_since_complaint": None,
                                             "recency_score": 5, "frequency_score": 2, "monetary_score": 2,
                                             "segment": "active", "preferred_channel": "web", "email_contacts": 3,
                                             "call_center_contacts": 0, "last_order_channel": "web",
                                             "last_order_category": "shoes", "last_order_amount": 90.0,
                                             "hours_since_last_order": 0},
            "recent_orders": [{"ts": now - 8e8, "order_id": f"o-{n}-1", "amount": 90.5, "currency": "EUR",
                               "channel": "store", "category": None},
                              {"ts": now - 1e6, "order_id": f"o-{n}-2", "amount": 90.0, "currency": "EUR",
                               "channel": "web", "category": "shoes"}],
            "consent": {"email:marketing": {"granted": True, "ts": now - 9e8}},
            "last_contact": {"web": now, "email": now - 5e6},
            "pending_absences": {}, "recent_decisions": {"rules": {}, "channels": {}},
            "ids": {t: [k] for t, k in keys.items()}, "id_counts": {t: 1 for t in TYPES}}
    return view_key.encode(), orjson.dumps(body)


def build(path: Path, profiles: int) -> dict[str, Any]:
    from nextclick.operators.io.view_index import ViewIndex

    index = ViewIndex(path, fresh=True)
    now = 1_795_428_000_000
    started = time.perf_counter()
    sizes = []
    for start in range(0, profiles, 1000):
        batch = []
        for n in range(start, min(start + 1000, profiles)):
            key, value = record(n, now)
            batch.append((n % 8, n // 8, key, value))
            if n % 1000 == 0:
                sizes.append(len(value))
        index.apply(batch)
    seconds = time.perf_counter() - started
    index.close()
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"profiles": profiles, "build_seconds": round(seconds, 1), "records_per_s": round(profiles / seconds),
            "record_bytes": round(statistics.mean(sizes)), "disk_bytes": disk,
            "disk_bytes_per_profile": round(disk / profiles)}


def serve(path: Path, port: int) -> None:
    from aiohttp import web

    from nextclick.flows.serve import Metrics, build_app
    from nextclick.operators.infra.config import Config
    from nextclick.operators.io.view_index import ViewIndex

    config = Config().replace(serve={"rate_limit": 0.0})
    app = build_app(config, ViewIndex(path), None, Metrics(), frozenset({TOKEN}), SECRET)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def load(port: int, profiles: int, rate: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(7)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}",
                                     connector=aiohttp.TCPConnector(limit=64)) as session:
        async def one(path: str) -> None:
            started = time.perf_counter()
            async with session.get(path, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

        for n in range(200):  # warm up the connections
            await one(f"/v1/profiles/customer/customer-{n}")
        latencies.clear()
        statuses.clear()
        tasks = []
        begin = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            due = begin + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            id_type = rng.choice(TYPES)
            n = rng.randrange(profiles) if rng.random() < 0.9 else profiles + rng.randrange(profiles)
            tasks.append(asyncio.create_task(one(f"/v1/profiles/{id_type}/{id_type}-{n}")))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - begin
    latencies.sort()
    return {"requests": len(latencies), "achieved_rate": round(len(latencies) / elapsed),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2), "statuses": {str(k): v for k, v in statuses.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=18088)
    parser.add_argument("--index", help="keep the index here and reuse it if it is there (a build of 1M takes minutes)")
    parser.add_argument("--staleness", type=int, default=0, metavar="N",
                        help="measure staleness end to end over N events instead (embedded broker, flow, service)")
    parser.add_argument("--epoch-seconds", type=float, default=2.0, help="the flow's epoch for --staleness")
    args = parser.parse_args()
    if args.staleness:
        print(orjson.dumps({"staleness": staleness(args.staleness, args.epoch_seconds), "cpus": os.cpu_count(),
                            "load_average": os.getloadavg()}).decode(), flush=True)
        return
    root = Path(tempfile.mkdtemp(prefix="nextclick-serve-bench-"))
    index = Path(args.index) if args.index else root / "index"
    try:
        if not (index / "CURRENT").exists():
            built = build(index, args.profiles)
            print(orjson.dumps({"index": built}).decode(), flush=True)
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(index, args.port))
        server.start()
        time.sleep(3)
        result = asyncio.run(load(args.port, args.profiles, args.rate, args.seconds))
        result["server_side"] = asyncio.run(server_side(args.port))
        result["server_rss_mb"] = rss_mb(server.pid)
        server.terminate()
        server.join(10)
        print(orjson.dumps({"lookups": result, "cpus": os.cpu_count(), "load_average": os.getloadavg()}).decode(),
              flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def staleness(events: int, epoch_s: float) -> dict[str, Any]:
    """Seconds from an order's acknowledgement by the broker to the service answering 200 for its customer."""
    import socket
    import subprocess
    import sys
    import threading
    import urllib.error
    import urllib.request
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main
    from confluent_kafka import Producer

    from nextclick.flows.local_broker import LocalBroker
    from nextclick.flows.targeting import build_flow
    from nextclick.operators.infra.clock import SystemClock
    from nextclick.operators.infra.config import Config
    from nextclick.operators.io.topics import ensure_topics

    root = Path(tempfile.mkdtemp(prefix="nextclick-staleness-"))
    broker = LocalBroker().start()
    kafka = {"bootstrap.servers": broker.bootstrap}
    names = {"inputs": ("bench.web",), "decisions": "bench.decisions", "dead_letter": "bench.dlq",
             "control": "bench.control", "profiles": "bench.profiles"}
    service: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    flow_thread: threading.Thread | None = None
    try:
        ensure_topics(kafka, {"bench.web": 2, "bench.decisions": 2, "bench.dlq": 1, "bench.control": 1,
                              "bench.profiles": 2})
        recovery = root / "recovery"
        recovery.mkdir()
        init_db_dir(recovery, 1)
        config = Config().replace(kafka=kafka, topics=names, privacy={"secret": SECRET.decode()},
                                  state={"dir": str(root / "state"), "recovery_dir": str(recovery), "shards": 2},
                                  flow={"epoch_seconds": epoch_s})
        flow = build_flow(config, clock=SystemClock(), stop=stop, readers=1)
        flow_thread = threading.Thread(target=lambda: run_main(flow, epoch_interval=timedelta(seconds=epoch_s),
                                                               recovery_config=RecoveryConfig(str(recovery))),
                                       daemon=True)
        flow_thread.start()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        (root / "tokens").write_text(TOKEN + "\n")
        (root / "serve.toml").write_text(f"""[kafka]
"bootstrap.servers" = "{broker.bootstrap}"
[topics]
profiles = "bench.profiles"
[privacy]
secret = "{SECRET.decode()}"
[serve]
address = "127.0.0.1:{port}"
token_file = "{root / 'tokens'}"
store_dir = "{root / 'serve'}"
rate_limit = 0
""")
        with (root / "serve.log").open("ab") as log:
            service = subprocess.Popen([sys.executable, "-m", "nextclick", "serve", "--config",
                                        str(root / "serve.toml")], stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"

        def status(path: str) -> int:
            request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except (urllib.error.URLError, ConnectionError):
                return 0

        producer = Producer({**kafka, "linger.ms": 0})
        measured = []
        for n in range(-1, events):  # -1: a warm-up (the flow's and the service's first epoch), not counted
            customer = f"stale-{n}"
            producer.produce("bench.web", orjson.dumps({
                "event_id": f"s{n}", "type": "purchase", "ts": time.time_ns() // 1_000_000, "customer_id": customer,
                "order_id": f"o{n}", "amount": 10.0}), customer.encode())
            if producer.flush(10):
                raise TimeoutError("the broker did not acknowledge an order")
            sent = time.monotonic()
            deadline = sent + (120 if n < 0 else 30)
            while status(f"/v1/profiles/customer/{customer}") != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{customer} never reached the service (see {root / 'serve.log'})")
                time.sleep(0.005)
            if n >= 0:
                measured.append(time.monotonic() - sent)
            time.sleep(1.1 - (time.monotonic() - sent) % 1.1)
        del producer  # closed before the broker stops
        measured.sort()
        return {"events": events, "epoch_seconds": epoch_s, "bound_seconds": epoch_s + 1.0,
                "p50_s": round(statistics.median(measured), 3),
                "p99_s": round(measured[min(len(measured) - 1, int(len(measured) * 0.99))], 3),
                "max_s": round(measured[-1], 3), "min_s": round(measured[0], 3),
                "within_bound": sum(1 for m in measured if m <= epoch_s + 1.0) / len(measured)}
    finally:
        if service is not None:
            service.terminate()
            service.wait(15)
        stop.set()
        if flow_thread is not None:
            flow_thread.join(60)
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


def rss_mb(pid: int | None) -> float | None:
    """The service process's resident memory (Linux), after the run."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def server_side(port: int) -> dict[str, Any]:
    """The service's own histogram of the profile route (its time, without the client's): the share of
    requests answered within each bucket bound."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("nextclick_serve_request_seconds_bucket") and 'route="/v1/profiles/{id_type}/{id}"' in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
    total = buckets.get("+Inf", 0.0) or 1.0
    return {f"within_{bound}s": round(n / total, 5) for bound, n in buckets.items() if bound != "+Inf"}


if __name__ == "__main__":
    main()
