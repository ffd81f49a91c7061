"""`nextclick demo`: the whole event loop on real parts, on one machine, in about a minute.

It starts the embedded broker (or uses the one you name), streams personas and background traffic
on a clock that runs `speed` times faster than real time (so the 60-minute cart window passes in
seconds without changing the rules), runs the flow, and prints decisions as they arrive on Kafka.
It also starts the profile service (`nextclick serve`, a child process on a free 127.0.0.1 port with a
generated token) on the profile view topic the flow writes, prints curl lines for one persona, and
before it stops runs them itself and prints what they answered.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Producer

from nextclick.flows.generate import MINUTE, PERSONAS, plan, stream
from nextclick.flows.local_broker import LocalBroker
from nextclick.flows.targeting import build_flow
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ScaledClock
from nextclick.operators.infra.config import DEMO_SECRET, Config, progress_topic
from nextclick.operators.io.kafka_admin import client_config, wait_for_broker
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.rules.loader import load_configured_rules

# The persona whose profile and next best action the demo shows: last week's web order, and a call now.
SERVE_PERSONA = "lapsed_high_value-0"
CHANNEL_ICONS = {"email": "✉", "ads": "◼", "call_center": "☎", "push": "➤", "sms": "✆", "web": "◎"}


@dataclass
class DemoSummary:
    decisions_by_rule: Counter[str] = field(default_factory=Counter)
    blocked_by_reason: Counter[str] = field(default_factory=Counter)
    dead_letters_by_reason: Counter[str] = field(default_factory=Counter)
    events_sent: int = 0
    garbage_sent: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    real_seconds: float = 0.0
    simulated_minutes: float = 0.0
    rules: tuple[str, ...] = ()

    @property
    def all_rules_fired(self) -> bool:
        return all(self.decisions_by_rule[r] > 0 for r in self.rules)


def _names_by_key() -> dict[str, str]:
    """The demo knows who its synthetic customers are; decisions only carry the keyed hash."""
    names = {}
    for persona in PERSONAS:
        for i in range(10):
            customer = f"{persona}-{i}"
            names[pseudonymize("customer", customer, DEMO_SECRET.encode())] = customer
    return names


def _counter_by(counter: Any, index: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in metrics.counter_values(counter).items():
        out[labels[index]] += int(value)
    return out


def run_demo(*, bootstrap: str | None = None, speed: float = 150.0, rate: float = 150.0,
             max_seconds: float = 60.0, out: TextIO = sys.stdout) -> DemoSummary:
    broker = None if bootstrap else LocalBroker().start()
    address = broker.bootstrap if broker is not None else str(bootstrap)
    workdir = Path(tempfile.mkdtemp(prefix="nextclick-demo-"))
    try:
        return _run(address, workdir, speed, rate, max_seconds, out)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _run(bootstrap: str, workdir: Path, speed: float, rate: float, max_seconds: float, out: TextIO) -> DemoSummary:
    kafka = {"bootstrap.servers": bootstrap}
    print(f"nextclick demo: broker {bootstrap}, clock at {speed:g}x (1 s real = {speed / 60:g} min simulated)",
          file=out, flush=True)
    wait_for_broker(kafka, timeout_s=30)
    config = Config().replace(
        kafka=kafka,
        state={"dir": str(workdir / "state"), "recovery_dir": str(workdir / "recovery"), "shards": 8, "sync": False},
        privacy={"demo": True},
        # Lapsed customers come with purchase history from up to a year ago.
        parse={"max_age_ms": 400 * 86_400_000},
        flow={"epoch_seconds": 1.0, "group_id": "nextclick-demo"},
        topics={"profiles": "nextclick.profiles"},
    )
    topics = config.topics
    ensure_topics(kafka, {**{t: 2 for t in topics.inputs}, topics.decisions: 4, topics.dead_letter: 1,
                          topics.control: 1, topics.profiles: 2, progress_topic(topics): 1})
    service = ProfileService(config, workdir, out)
    try:
        return _run_flow(config, workdir, service, speed, rate, max_seconds, out)
    finally:
        service.stop()


def _run_flow(config: Config, workdir: Path, service: ProfileService, speed: float, rate: float,
              max_seconds: float, out: TextIO) -> DemoSummary:
    kafka, topics = dict(config.kafka), config.topics
    recovery = Path(config.state.recovery_dir)
    recovery.mkdir(parents=True)
    init_db_dir(recovery, 1)

    ruleset = load_configured_rules(config)
    clock = ScaledClock(speed)
    start = clock.now_ms()
    scripted = plan(start + MINUTE, personas_each=2)
    # Long enough for the last cart to be abandoned (60 min) plus the allowed lateness, and a bit.
    last_absence = max(p.at_ms for p in scripted) + 60 * MINUTE + ruleset.late.allowed_lateness_ms
    end_sim = last_absence + 3 * MINUTE
    stop_flow = threading.Event()
    stop_generator = threading.Event()
    before = {"rules": _counter_by(metrics.DECISIONS, 0), "blocked": _counter_by(metrics.BLOCKED, 1),
              "dead": _counter_by(metrics.DEAD_LETTERS, 0)}
    errors: list[BaseException] = []

    def run_flow() -> None:
        try:
            run_main(build_flow(config, clock=clock, stop=stop_flow, ruleset=ruleset, readers=1),
                     epoch_interval=timedelta(seconds=config.flow.epoch_seconds),
                     recovery_config=RecoveryConfig(str(recovery)))
        except BaseException as exc:  # reported after the live view ends
            errors.append(exc)

    gen_stats: list[Any] = []

    def run_generator() -> None:
        producer = Producer(client_config(kafka, **{"linger.ms": 5}))
        gen_stats.append(stream(producer, topics.inputs, clock, scripted, rate=rate, customers=50_000,
                                duration_ms=end_sim - start - 5 * MINUTE, garbage_every=250, stop=stop_generator))

    flow_thread = threading.Thread(target=run_flow, name="nextclick-flow", daemon=True)
    gen_thread = threading.Thread(target=run_generator, name="nextclick-generator", daemon=True)
    summary = DemoSummary(rules=tuple(r.id for r in ruleset.rules))
    real_start = time.monotonic()
    flow_thread.start()
    gen_thread.start()
    names = _names_by_key()
    consumer = Consumer(client_config(kafka, **{"group.id": f"nextclick-demo-view-{time.time_ns()}",
                                                "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                                "fetch.queue.backoff.ms": 10}))
    consumer.subscribe([topics.decisions, topics.dead_letter])
    service.announce()
    print(f"{'sim time':>9}  {'':1} {'channel':<11} {'rule':<26} {'customer':<20} offer / why", file=out)
    try:
        while clock.now_ms() < end_sim and time.monotonic() - real_start < max_seconds and not errors:
            for msg in consumer.consume(500, 0.2):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        print(f"  consumer: {error.str()}", file=out)
                    continue
                _show(msg, topics.decisions, names, start, out)
    except KeyboardInterrupt:
        print("interrupted; stopping", file=out)
    finally:
        stop_generator.set()
        gen_thread.join(30)
        # Let the flow read what was produced last, then stop it and drain what it wrote.
        time.sleep(2 * config.flow.epoch_seconds)
        stop_flow.set()
        flow_thread.join(60)
        drain_until = time.monotonic() + 3
        while time.monotonic() < drain_until:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    _show(msg, topics.decisions, names, start, out)
        consumer.close()
    if errors:
        raise RuntimeError(f"the flow failed: {errors[0]!r}") from errors[0]
    service.show()
    summary.real_seconds = time.monotonic() - real_start
    summary.simulated_minutes = (clock.now_ms() - start) / MINUTE
    summary.decisions_by_rule = _counter_by(metrics.DECISIONS, 0) - before["rules"]
    summary.blocked_by_reason = _counter_by(metrics.BLOCKED, 1) - before["blocked"]
    summary.dead_letters_by_reason = _counter_by(metrics.DEAD_LETTERS, 0) - before["dead"]
    if gen_stats:
        summary.events_sent = gen_stats[0].sent
        summary.garbage_sent = gen_stats[0].garbage
        summary.by_channel = dict(gen_stats[0].by_channel or {})
    _print_summary(summary, out)
    return summary


class ProfileService:
    """`nextclick serve` for the demo: a child process on a free local port with a generated token, on
    the view topic the flow writes; stopped (and its files removed with the work directory) at the end."""

    def __init__(self, config: Config, workdir: Path, out: TextIO) -> None:
        self.out = out
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.token_file = workdir / "serve-token"
        self.token_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.token_file.chmod(0o600)
        path = workdir / "serve.toml"
        path.write_text(f"""[kafka]
"bootstrap.servers" = "{config.kafka['bootstrap.servers']}"
[topics]
profiles = "{config.topics.profiles}"
[privacy]
demo = true
[flow]
rules_file = "{config.flow.rules_file}"
[serve]
address = "127.0.0.1:{port}"
token_file = "{self.token_file}"
store_dir = "{workdir / 'serve'}"
""")
        self.log = workdir / "serve.log"
        with self.log.open("ab") as log:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "nextclick", "serve", "--config", str(path)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
        self.paths = (f"/v1/profiles/customer/{SERVE_PERSONA}",
                      f"/v1/profiles/customer/{SERVE_PERSONA}/next-best-action?channel=call_center&outcome=unresolved")

    def _ready(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process is not None and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        return False

    def curl(self, path: str) -> str:
        return f"curl -s -H \"Authorization: Bearer $(cat {self.token_file})\" '{self.base}{path}'"

    def announce(self) -> None:
        """Print where the service is and the curl lines to try while the demo runs."""
        if not self._ready():
            print(f"profile service: did not start (see {self.log})", file=self.out, flush=True)
            self.stop()
            return
        print(f"profile service: {self.base} (nextclick serve; token in {self.token_file}). While the demo runs:",
              file=self.out)
        for path in self.paths:
            print(f"  {self.curl(path)}", file=self.out)
        print("", file=self.out, flush=True)

    def show(self) -> None:
        """Run the curl lines' requests (the persona's profile, then its next best action) and print both."""
        if self.process is None:
            return
        token = self.token_file.read_text().strip()
        print("", file=self.out)
        for path in self.paths:
            request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            except (urllib.error.URLError, ConnectionError) as exc:
                status, body = 0, str(exc).encode()
            print(f"$ {self.curl(path)}", file=self.out)
            print(f"[HTTP {status}] {body.decode(errors='replace')}", file=self.out, flush=True)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _show(msg: Any, decisions_topic: str, names: dict[str, str], start: int, out: TextIO) -> None:
    headers = dict(msg.headers() or [])
    if msg.topic() == decisions_topic:
        body = orjson.loads(msg.value())
        sim = (body["trigger"]["ts"] - start) / 1000
        who = names.get(body["customer"], body["customer"][:12] + "…")
        why = ", ".join(f"{k}={v}" for k, v in body["reasons"]["signals"].items())
        icon = CHANNEL_ICONS.get(body["channel"], "•")
        address = body.get("address")
        to = f"  → {address['id_type']} key {address['key'][:10]}…" if address else ""
        print(f"{_clock(sim)}  {icon} {body['channel']:<11} {body['reasons']['rule_id']:<26} {who:<20} "
              f"{body['offer'] or body['action']}  ({body['trigger']['name']}{': ' + why if why else ''}){to}",
              file=out, flush=True)
        if names.get(body["customer"], "").startswith("anonymous_shopper") and body["channel"] == "email":
            print(f"{'':>9}    one profile for the cookie, the sign-in and the email; the decision body: "
                  f"{orjson.dumps(body).decode()}", file=out, flush=True)
    else:
        reason = headers.get("nextclick.errors.reason", b"?").decode()
        where = (f"{headers.get('__connect.errors.topic', b'?').decode()}"
                 f"[{headers.get('__connect.errors.partition', b'?').decode()}]"
                 f"@{headers.get('__connect.errors.offset', b'?').decode()}")
        text = headers.get("__connect.errors.exception.message", b"").decode()
        print(f"{'':>9}  ✗ dead letter {reason:<24} {where:<24} {text}", file=out, flush=True)


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"+{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _print_summary(s: DemoSummary, out: TextIO) -> None:
    print("", file=out)
    print(f"Summary: {s.real_seconds:.1f} s real, {s.simulated_minutes:.0f} simulated minutes", file=out)
    channels = ", ".join(f"{c} {n}" for c, n in sorted(s.by_channel.items()))
    print(f"  messages sent      {s.events_sent} ({channels}), of which garbage {s.garbage_sent}", file=out)
    print("  decisions by rule", file=out)
    for rule in s.rules:
        mark = "✓" if s.decisions_by_rule[rule] else "✗"
        print(f"    {mark} {rule:<28} {s.decisions_by_rule[rule]}", file=out)
    print("  blocked by reason  " + (", ".join(f"{r} {n}" for r, n in sorted(s.blocked_by_reason.items()))
                                    or "none"), file=out)
    print("  dead letters       " + (", ".join(f"{r} {n}" for r, n in sorted(s.dead_letters_by_reason.items()))
                                    or "none"), file=out)
    print(f"  every rule fired:  {'yes' if s.all_rules_fired else 'NO'}", file=out, flush=True)
