"""An erasure survives a SIGKILL before its epoch's checkpoint: nothing of the person comes back.

An outside probe (the call-center team's view of the profile service) erased a signed-in person by their
email address and killed the flow about 150 ms later, before the epoch committed. The erasure itself is
committed at once (the graph's records and the profile, undo records included), but two things were only
staged for the checkpoint and died with the process:
- the profile's tombstone on the view topic: the replay found nothing left to erase and wrote none, so
  the service kept answering with the person's profile and orders, for good;
- the marks that say which identifiers were erased and when: the replayed erasure by the email found the
  email alone, so a purchase keyed by the customer id, dated before the erasure and read again in the
  replay, started a new profile of the erased customer.

Here the same story runs through the real broker and flow, killed by the failpoint right after the shard
erased the profile (`NEXTCLICK_FAILPOINTS=erased:1`), with event times hours old as in a backlog.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.io.topics import ensure_topics
from tests.flowrun import SECRET, FlowSetup, read_profiles, run_to_end, start
from tests.helpers import consume_all

pytestmark = [pytest.mark.broker, pytest.mark.slow]

HOUR = 3_600_000


def killed_at_the_first_erasure_then_run_to_end(setup: FlowSetup, log: Path) -> None:
    """The flow tailing the input, SIGKILLed right after a shard erased a profile (failpoint `erased`, before
    the epoch's checkpoint), then resumed to the end of the input."""
    proc = start(setup, stop_at_end=False, failpoints="erased:1", log=log)
    try:
        assert proc.wait(60) == -signal.SIGKILL, "killed right after the shard erased a profile"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the failpoint after the erasure was not reached")
    run_to_end(setup, log=log)


def live_view_keys(kafka: dict[str, str], view: str) -> list[str]:
    """The view topic's keys whose last record is not a tombstone."""
    last: dict[bytes, bytes | None] = {}
    for msg in consume_all(kafka, [view]):
        last[msg.key()] = msg.value()
    return sorted(k.decode() for k, v in last.items() if v is not None)


def test_an_erasure_killed_before_its_checkpoint_leaves_nothing_of_the_person(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    web, store = f"{topic_prefix}.web", f"{topic_prefix}.store"
    view = f"{topic_prefix}.profiles"
    ensure_topics(kafka, {web: 1, store: 1, view: 1})
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[web, store], shards=2, epoch_seconds=1.0,
                             extra_env={"NEXTCLICK_TOPICS__PROFILES": view})
    secret = SECRET.encode()
    cookie, customer, address = "ck-gone-1", "GONE-1", "gone.person@example.com"
    gone = {pseudonymize("cookie", cookie, secret), pseudonymize("customer", customer, secret),
            pseudonymize("email", address, secret)}
    kept = pseudonymize("customer", "KEPT-2", secret)
    start_ms = int(time.time() * 1000) - 3 * HOUR
    producer = Producer(kafka)

    def send(topic: str, key: str, body: dict[str, object]) -> None:
        producer.produce(topic, orjson.dumps(body), key.encode())

    send(web, cookie, {"event_id": "g1", "type": "page_view", "ts": start_ms, "page_type": "product"})
    send(web, cookie, {"event_id": "g2", "type": "login", "ts": start_ms + 60_000, "customer_id": customer,
                       "email": address})
    send(store, customer, {"event_id": "g3", "type": "store_purchase", "ts": start_ms + 120_000,
                           "customer_id": customer, "order_id": "s-1", "amount": 80.0})
    send(store, "KEPT-2", {"event_id": "k1", "type": "store_purchase", "ts": start_ms + 120_000,
                           "customer_id": "KEPT-2", "order_id": "s-2", "amount": 20.0})
    assert producer.flush(10) == 0
    run_to_end(setup, log=tmp_path / "flow.log")
    assert gone & set(read_profiles(setup.state_dir, 2)), "the person has a profile before the erasure"

    # A second purchase, dated before the erasure, and the erasure by the email, read in one epoch.
    send(store, customer, {"event_id": "g4", "type": "store_purchase", "ts": start_ms + 180_000,
                           "customer_id": customer, "order_id": "s-3", "amount": 15.0})
    assert producer.flush(10) == 0
    producer.produce(setup.control, orjson.dumps({"command": "erase", "request_id": "dsr-1", "id_type": "email",
                                                  "id": address}), b"dsr-1")
    assert producer.flush(10) == 0
    killed_at_the_first_erasure_then_run_to_end(setup, tmp_path / "flow.log")

    profiles = read_profiles(setup.state_dir, 2)
    assert not gone & set(profiles), "an erased identifier has a profile again"
    assert kept in profiles
    live = live_view_keys(kafka, view)
    assert [k for k in live if any(g in k for g in gone)] == [], f"the view still shows the erased person: {live}"
    assert f"profiles/{kept}" in live


def test_a_batch_of_erasures_killed_at_the_first_shards_erasure_leaves_nothing_of_anyone(
        kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> None:
    """An outside probe's wider window: the identity stage erases the graph for every erasure of its batch
    before the shards come to them, so a kill at the first shard's erasure left every other person's
    linked profile in state and on the view for good. Their other identifiers are recorded on the control
    topic first (follow-ups), which the replay carries out."""
    web = f"{topic_prefix}.web"
    view = f"{topic_prefix}.profiles"
    ensure_topics(kafka, {web: 1, view: 1})
    setup = FlowSetup.create(kafka, tmp_path, topic_prefix, inputs=[web], shards=2, epoch_seconds=1.0,
                             extra_env={"NEXTCLICK_TOPICS__PROFILES": view})
    secret = SECRET.encode()
    start_ms = int(time.time() * 1000) - 3 * HOUR
    people = [(f"ck-batch-{n}", f"BATCH-{n}", f"batch.{n}@example.com") for n in range(4)]
    producer = Producer(kafka)
    for n, (cookie, customer, address) in enumerate(people):
        for i, body in enumerate(({"type": "page_view", "page_type": "product"},
                                  {"type": "login", "customer_id": customer, "email": address},
                                  {"type": "purchase", "customer_id": customer, "order_id": f"o-{n}", "amount": 9.0})):
            producer.produce(web, orjson.dumps({"event_id": f"b{n}-{i}", "ts": start_ms + n * 1000 + i * 60_000,
                                                **body}), cookie.encode())
    assert producer.flush(10) == 0
    run_to_end(setup, log=tmp_path / "flow.log")
    gone = {pseudonymize(t, raw, secret) for person in people
            for t, raw in zip(("cookie", "customer", "email"), person, strict=True)}
    assert gone & set(read_profiles(setup.state_dir, 2))
    for n, (_, _, address) in enumerate(people):
        producer.produce(setup.control, orjson.dumps({"command": "erase", "request_id": f"dsr-{n}", "id_type": "email",
                                                      "id": address}), f"dsr-{n}".encode())
    assert producer.flush(10) == 0
    killed_at_the_first_erasure_then_run_to_end(setup, tmp_path / "flow.log")

    assert not gone & set(read_profiles(setup.state_dir, 2)), "an erased person's profile was left"
    live = live_view_keys(kafka, view)
    assert [k for k in live if any(g in k for g in gone)] == [], f"the view still shows erased people: {live}"
