"""Shared helpers for the crash and rescale tests: a deterministic workload, the flow as subprocesses.

The flow runs exactly as in production, as separate processes configured by `NEXTCLICK_*`
variables, either through Bytewax's own runner (`python -m bytewax.run nextclick.flows.main:flow -r REC -s N
-b 0`, whole-second epochs) or through `nextclick run` (`python -m nextclick run`), which honours
`NEXTCLICK_FLOW__EPOCH_SECONDS` so epochs (and checkpoints) can be sub-second. What a run leaves
behind is read back from the outside: every shard's RocksDB (read-only) and the decisions topic.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from bytewax.recovery import init_db_dir
from confluent_kafka import Producer

from nextclick.flows.local_broker import free_port
from nextclick.operators.identity.guards import default_identity_rules
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.profile.codec import stored_as_dict
from nextclick.operators.state.keys import PROFILE_PREFIX
from nextclick.operators.state.layout import has_store, profile_families
from nextclick.operators.state.store import ShardStore
from tests.helpers import consume_all

REPO = Path(__file__).resolve().parent.parent
SECRET = "flowrun-test-secret"
CATEGORIES = ("shoes", "jackets", "bags", "watches")

Message = tuple[str, bytes, bytes]  # (customer id, kafka key, value)


# ------------------------------------------------------------------------------------------ workload


def workload(customers: int, *, seed: int = 11, start_ms: int | None = None, span_ms: int = 120_000) -> list[Message]:
    """Valid events for `customers` customers, in event-time order, all within `span_ms` of `start_ms`.

    Every customer gets a short seeded story drawn from consents (granted or refused), page views,
    carts, purchases, call-center contacts and complaints, so post-purchase, call-back and
    suppression paths all run. Event times are recent (default: the last two and a half minutes),
    so parsing accepts them and no absence is due on the wall clock while a test runs (the shortest
    absence is 20 minutes plus 5 minutes of allowed lateness).
    """
    rng = random.Random(seed)
    start = start_ms if start_ms is not None else int(time.time() * 1000) - span_ms - 30_000
    timed: list[tuple[int, int, Message]] = []
    n = 0
    for c in range(customers):
        who = f"cust-{c:05d}"
        t = start + rng.randrange(0, span_ms // 2)
        step = max(1, span_ms // 2 // 12)
        body: list[tuple[str, dict[str, Any]]] = []
        if rng.random() < 0.7:
            body.append(("consent", {"channel": "email", "purpose": "marketing", "granted": rng.random() < 0.85}))
        for _ in range(rng.randint(1, 4)):
            body.append(("page_view", {"page_type": "product", "category": rng.choice(CATEGORIES)}))
        if rng.random() < 0.5:
            body.append(("add_to_cart", {"sku": f"sku-{rng.randrange(100)}", "amount": round(rng.uniform(5, 150), 2),
                                         "quantity": 1, "category": rng.choice(CATEGORIES)}))
        if rng.random() < 0.2:
            body.append(("complaint", {"topic": "late_delivery", "severity": "high"}))
        for k in range(rng.choice((0, 0, 1, 1, 2))):
            kind = rng.choice(("purchase", "app_purchase", "store_purchase"))
            body.append((kind, {"order_id": f"o-{who}-{k}", "amount": round(rng.uniform(10, 300), 2),
                                "currency": "EUR"}))
        if rng.random() < 0.3:
            body.append(("call_center_contact", {"topic": "billing",
                                                 "outcome": rng.choice(("resolved", "unresolved"))}))
        if rng.random() < 0.3:
            body.append(("email_open", {"campaign_id": "weekly"}))
        for i, (etype, attrs) in enumerate(body):
            n += 1
            t += rng.randrange(1, step)
            value = orjson.dumps({"event_id": f"{who}-{i}", "type": etype, "ts": t, "customer_id": who, **attrs})
            timed.append((t, n, (who, who.encode(), value)))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [m for _, _, m in timed]


def identity_workload(persons: int, *, seed: int = 13, start_ms: int | None = None,
                      span_ms: int = 120_000) -> list[Message]:
    """Valid events of `persons` people who browse anonymously and then sign in, in event-time order.

    Each person's story, seeded: page views (and often a cart) known only by a cookie; sometimes a
    consent or a store purchase under their customer id before they sign in (then both identifiers
    have a profile to merge); mostly a `login` naming the cookie, the customer id and an email; then
    events by any of those (web events with the cookie and customer id, a purchase by the customer id,
    an email click keyed by the address), a second browser's login, an `identify` linking a device.
    A person's events are all tagged with the person (`Message[0]`), so `produce` keeps their order.
    Times are recent, as in `workload`, so no absence falls due while a test runs.
    """
    rng = random.Random(seed)
    start = start_ms if start_ms is not None else int(time.time() * 1000) - span_ms - 30_000
    timed: list[tuple[int, int, Message]] = []
    n = 0
    for p in range(persons):
        person, cookie, customer, email = f"p{p:05d}", f"ck-{p:05d}", f"cust-{p:05d}", f"p{p:05d}@example.com"
        t = start + rng.randrange(0, span_ms // 2)
        step = max(1, span_ms // 2 // 14)
        story: list[tuple[str, dict[str, Any]]] = []
        for _ in range(rng.randint(1, 3)):
            story.append((cookie, {"type": "page_view", "page_type": "product", "category": rng.choice(CATEGORIES)}))
        if rng.random() < 0.6:
            story.append((cookie, {"type": "add_to_cart", "sku": f"sku-{rng.randrange(50)}", "quantity": 1,
                                   "amount": round(rng.uniform(5, 150), 2), "category": rng.choice(CATEGORIES)}))
        if rng.random() < 0.4:
            story.append((customer, {"type": "consent", "customer_id": customer, "channel": "email",
                                     "purpose": "marketing", "granted": rng.random() < 0.8}))
        if rng.random() < 0.2:
            story.append((customer, {"type": "store_purchase", "customer_id": customer, "order_id": f"s-{p}",
                                     "amount": round(rng.uniform(10, 200), 2)}))
        if rng.random() < 0.85:
            story.append((cookie, {"type": "login", "customer_id": customer, "email": email, "method": "password"}))
            if rng.random() < 0.5:
                story.append((cookie, {"type": "page_view", "customer_id": customer, "page_type": "checkout"}))
            if rng.random() < 0.4:
                story.append((customer, {"type": "purchase", "customer_id": customer, "order_id": f"o-{p}",
                                         "amount": round(rng.uniform(20, 300), 2), "currency": "EUR"}))
            if rng.random() < 0.3:
                story.append((email, {"type": "email_click", "customer_id": customer, "campaign_id": "weekly"}))
            if rng.random() < 0.2:
                story.append((f"ck2-{p:05d}", {"type": "login", "customer_id": customer, "method": "sso"}))
            if rng.random() < 0.2:
                story.append((f"dev-{p:05d}", {"type": "identify", "id_type": "device", "customer_id": customer,
                                               "source": "app_link"}))
        for i, (kafka_key, body) in enumerate(story):
            n += 1
            t += rng.randrange(1, step)
            value = orjson.dumps({"event_id": f"{person}-{i}", "ts": t, **body})
            timed.append((t, n, (person, kafka_key.encode(), value)))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [m for _, _, m in timed]


def partition_of(customer: str, partitions: int) -> int:
    """A customer's events all go to one partition, so their order survives any number of partitions."""
    return zlib.crc32(customer.encode()) % partitions


def produce(kafka: dict[str, str], topic: str, messages: Sequence[Message], partitions: int) -> None:
    producer = Producer({**kafka, "linger.ms": 5, "enable.idempotence": True})
    for who, key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition_of(who, partitions))
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(30) == 0, "input not delivered"


class PacedProducer(threading.Thread):
    """Produce `messages` in chunks over `seconds`, so a tailing flow sees input arrive over time."""

    def __init__(self, kafka: dict[str, str], topic: str, messages: Sequence[Message], partitions: int,
                 seconds: float, chunks: int = 40) -> None:
        super().__init__(daemon=True)
        self.args = (kafka, topic, messages, partitions)
        self.seconds, self.chunks = seconds, chunks
        self.error: BaseException | None = None

    def run(self) -> None:
        kafka, topic, messages, partitions = self.args
        size = max(1, -(-len(messages) // self.chunks))
        began = time.monotonic()
        try:
            for n, start in enumerate(range(0, len(messages), size)):
                # Chunk n is due at n/chunks of the way: a chunk's own delivery time (about as long as
                # the pause, on the embedded broker) does not stretch the whole beyond `seconds`.
                time.sleep(max(0.0, began + n * self.seconds / self.chunks - time.monotonic()))
                produce(kafka, topic, messages[start:start + size], partitions)
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc


# ------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class FlowSetup:
    """One deployment: its topics, its state and recovery directories."""

    kafka: dict[str, str]
    inputs: tuple[str, ...]
    decisions: str
    dead_letter: str
    control: str
    state_dir: Path
    recovery_dir: Path
    shards: int = 4
    epoch_seconds: float = 0.3
    keep_checkpoints: int = 64
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, kafka: dict[str, str], root: Path, prefix: str, *, inputs: Sequence[str],
               shards: int = 4, **kw: Any) -> FlowSetup:
        """Output/control topics named after `prefix`, fresh state and (initialised) recovery dirs."""
        setup = cls(kafka=dict(kafka), inputs=tuple(inputs), decisions=f"{prefix}.decisions",
                    dead_letter=f"{prefix}.dead_letter", control=f"{prefix}.control",
                    state_dir=root / "state", recovery_dir=root / "recovery", shards=shards, **kw)
        ensure_topics(kafka, {setup.decisions: 2, setup.dead_letter: 1, setup.control: 1})
        setup.recovery_dir.mkdir(parents=True)
        init_db_dir(setup.recovery_dir, 1)
        return setup

    def with_(self, **changes: Any) -> FlowSetup:
        return replace(self, **changes)

    def env(self, *, stop_at_end: bool, failpoints: str = "") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NEXTCLICK_", "BYTEWAX_"))}
        env.update({
            "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS": self.kafka["bootstrap.servers"],
            "NEXTCLICK_TOPICS__INPUTS": ",".join(self.inputs),
            "NEXTCLICK_TOPICS__DECISIONS": self.decisions,
            "NEXTCLICK_TOPICS__DEAD_LETTER": self.dead_letter,
            "NEXTCLICK_TOPICS__CONTROL": self.control,
            "NEXTCLICK_STATE__DIR": str(self.state_dir),
            "NEXTCLICK_STATE__RECOVERY_DIR": str(self.recovery_dir),
            "NEXTCLICK_STATE__SHARDS": str(self.shards),
            "NEXTCLICK_STATE__KEEP_CHECKPOINTS": str(self.keep_checkpoints),
            "NEXTCLICK_FLOW__EPOCH_SECONDS": str(self.epoch_seconds),
            "NEXTCLICK_FLOW__STOP_AT_END": "true" if stop_at_end else "false",
            "NEXTCLICK_PRIVACY__SECRET": SECRET,
            "NEXTCLICK_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        })
        if failpoints:
            env["NEXTCLICK_FAILPOINTS"] = failpoints
        env.update(self.extra_env)
        return env


def start(setup: FlowSetup, *, stop_at_end: bool, runner: str = "cli", failpoints: str = "",
          process_id: int | None = None, addresses: Sequence[str] | None = None,
          log: Path | None = None, args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Launch one process of the flow. `runner`: "cli" (`nextclick run`, sub-second epochs, plus
    `args`) or "bytewax" (`python -m bytewax.run nextclick.flows.main:flow -r REC -s <whole seconds> -b 0`)."""
    if runner == "bytewax":
        cmd = [sys.executable, "-m", "bytewax.run", "nextclick.flows.main:flow", "-r", str(setup.recovery_dir),
               "-s", str(max(1, round(setup.epoch_seconds))), "-b", "0"]
        if addresses:
            cmd += ["-i", str(process_id), "-a", ";".join(addresses)]
    elif runner == "cli":
        cmd = [sys.executable, "-m", "nextclick", "run", "--broker-timeout", "30"]
        if addresses:
            cmd += ["--process-id", str(process_id), "--addresses", ";".join(addresses)]
        cmd += list(args)
    else:
        raise ValueError(runner)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    try:
        return subprocess.Popen(cmd, cwd=REPO, env=setup.env(stop_at_end=stop_at_end, failpoints=failpoints),
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def run_to_end(setup: FlowSetup, *, processes: int = 1, runner: str = "cli", timeout_s: float = 120,
               log: Path | None = None) -> float:
    """Run the flow with stop_at_end in `processes` processes until all exit; seconds taken."""
    started = time.monotonic()
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)] if processes > 1 else None
    procs = [start(setup, stop_at_end=True, runner=runner, process_id=i, addresses=addresses, log=log)
             for i in range(processes)]
    try:
        for p in procs:
            rc = p.wait(max(1.0, timeout_s - (time.monotonic() - started)))
            assert rc == 0, f"flow process exited with {rc}; see {log}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return time.monotonic() - started


@dataclass
class Kill:
    """One interrupted run: SIGKILL after `after_s` seconds, or by the failpoint plan `failpoints`."""

    after_s: float = 0.0
    failpoints: str = ""
    # Filled in by `crash_run`:
    how: str = ""
    seconds: float = 0.0


def kill_plan(rng: random.Random, kills: int, *, max_after_s: float = 4.0) -> list[Kill]:
    """Half timed kills, a quarter inside a checkpoint (after RocksDB wrote it, before Bytewax
    committed it), a quarter just before a checkpoint; shuffled."""
    plan: list[Kill] = []
    for i in range(kills):
        kind = i % 4
        if kind in (0, 1):
            plan.append(Kill(after_s=rng.uniform(0.5, max_after_s)))
        elif kind == 2:
            plan.append(Kill(failpoints=f"after_checkpoint:{rng.randint(1, 12)}"))
        else:
            plan.append(Kill(failpoints=f"before_checkpoint:{rng.randint(1, 12)}"))
    rng.shuffle(plan)
    return plan


def crash_run(setup: FlowSetup, plan: Sequence[Kill], *, runner: str = "cli", failpoint_timeout_s: float = 8.0,
              log: Path | None = None) -> list[Kill]:
    """Start the tailing flow and SIGKILL it once per `plan` entry, restarting from the same dirs.

    A failpoint that is not reached within `failpoint_timeout_s` (too few checkpoints before the
    input ran dry) is replaced by a plain SIGKILL, recorded as such in `how`.
    """
    for kill in plan:
        started = time.monotonic()
        proc = start(setup, stop_at_end=False, runner=runner, failpoints=kill.failpoints, log=log)
        wait_s = kill.after_s if not kill.failpoints else failpoint_timeout_s
        try:
            rc = proc.wait(wait_s)
            assert rc == -signal.SIGKILL, f"flow exited with {rc} instead of being killed; see {log}"
            kill.how = f"failpoint {kill.failpoints}"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kill.how = f"SIGKILL after {wait_s:.2f}s" + (f" ({kill.failpoints} not reached)" if kill.failpoints else "")
        kill.seconds = time.monotonic() - started
    return list(plan)


# --------------------------------------------------------------------------------------- observing


def read_profiles(state_dir: Path, shards: int) -> dict[str, dict[str, Any]]:
    """Every committed profile of every shard of every family (own and linked profiles), by profile key
    (read-only; the flow must be stopped)."""
    out: dict[str, dict[str, Any]] = {}
    for family in profile_families(shards, default_identity_rules().anchors):
        for shard in range(shards):
            path = family.path(state_dir, shard)
            if not has_store(path):
                continue
            store = ShardStore.open_read_only(path)
            try:
                for key, value in store.scan(PROFILE_PREFIX):
                    customer = key[len(PROFILE_PREFIX):].decode()
                    assert customer not in out, f"{customer} has a profile in two families"
                    out[customer] = stored_as_dict(value)
            finally:
                store.close()
    return out


@dataclass(frozen=True)
class DecisionRecord:
    ce_id: str
    key: bytes | None
    body: bytes
    headers: tuple[tuple[str, bytes], ...]


def read_decisions(kafka: dict[str, str], topic: str) -> list[DecisionRecord]:
    out = []
    for msg in consume_all(kafka, [topic], idle_s=1.0, timeout_s=60):
        headers = tuple(msg.headers() or ())
        ce_id = dict(headers)["ce_id"].decode()
        out.append(DecisionRecord(ce_id, msg.key(), msg.value(), headers))
    return out


def dedupe(records: list[DecisionRecord]) -> dict[str, DecisionRecord]:
    """First copy of each ce_id; asserts every later copy repeats it exactly."""
    first: dict[str, DecisionRecord] = {}
    for rec in records:
        seen = first.setdefault(rec.ce_id, rec)
        assert (seen.key, seen.body) == (rec.key, rec.body), f"ce_id {rec.ce_id} emitted with two bodies"
        assert dict(seen.headers) == dict(rec.headers), f"ce_id {rec.ce_id} emitted with two header sets"
    return first


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run's result: what a crashed, rescaled or restored run must end with."""

    profiles: dict[str, dict[str, Any]]
    decisions: dict[str, DecisionRecord]
    seconds: float


def reference_run(kafka: dict[str, str], root: Path, prefix: str, topic: str, messages: Sequence[Message],
                  partitions: int, *, shards: int = 4, runner: str = "cli", **setup: Any) -> Reference:
    """`messages` through a flow of its own on `topic`, from start to end with nothing in the way."""
    produce(kafka, topic, messages, partitions)
    clean = FlowSetup.create(kafka, root / "clean", f"{prefix}.clean", inputs=[topic], shards=shards, **setup)
    seconds = run_to_end(clean, runner=runner, log=root / "clean.log")
    return Reference(read_profiles(clean.state_dir, shards), dedupe(read_decisions(kafka, clean.decisions)), seconds)


def assert_same_profiles(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> None:
    """The same customers, dict for dict; a failure names how many differ and shows the first."""
    assert set(got) == set(expected)
    different = [c for c in expected if got[c] != expected[c]]
    assert not different, (f"{len(different)} profiles differ, e.g. {different[0]}: "
                           f"{got[different[0]]} != {expected[different[0]]}")


def assert_same_decisions(expected: dict[str, DecisionRecord], got: dict[str, DecisionRecord]) -> None:
    """The same ce_ids (deduplicated), each with the same key and body; a failure names what is missing
    and what is new, by rule and trigger."""
    def named(records: dict[str, DecisionRecord], ids: set[str]) -> list[str]:
        out = []
        for ce_id in sorted(ids)[:5]:
            body = orjson.loads(records[ce_id].body)
            out.append(f"{body['reasons']['rule_id']} on {body['trigger']['name']} {body['trigger']['id']} "
                       f"(customer {body['customer'][:8]}, profile version {body.get('profile_version')})")
        return out

    missing, new = set(expected) - set(got), set(got) - set(expected)
    assert not missing and not new, (f"{len(missing)} decisions missing, e.g. {named(expected, missing)}; "
                                     f"{len(new)} new, e.g. {named(got, new)}; of {len(expected)}")
    for ce_id, rec in expected.items():
        assert (got[ce_id].key, got[ce_id].body) == (rec.key, rec.body)
