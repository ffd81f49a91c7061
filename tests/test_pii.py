"""PII never leaves the parser: not in state, recovery, decisions or logs; only the DLQ keeps it.

Known personal values are planted in the input (emails as Kafka keys of the email channel and in
`email` fields, phone numbers, names, addresses, free-text notes, a cookie as Kafka key). After the
flow has run to completion with a recovery directory, every byte it left behind is scanned: each
file under the state directory (RocksDB SST, WAL, MANIFEST, LOG...), the decoded contents of every
RocksDB (in case a value sits compressed in an SST block), every file of the Bytewax recovery
directory (SQLite), the decision topic (keys, values, headers) and the logs (the JSON log stream and
the process's stdout/stderr). The dead-letter topic is the one documented exception: it keeps
refused messages byte for byte (docs/security.md), so a planted value in a refused message shows up
there and only there.

Also here: the flow refuses to start without the HMAC secret, and the dead-letter redaction option.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from rocksdict import AccessType, Options, Rdict

from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config, ConfigError, ParseConfig, PrivacyConfig, load_config
from nextclick.operators.infra.logs import configure_logging
from nextclick.operators.io.deadletter import REDACTED_HEADER, dead_letter_headers, dead_letter_record, redact_value
from nextclick.operators.io.topics import ensure_topics
from nextclick.operators.records import DeadLetter, SourcePosition
from nextclick.operators.tools.profiles import read_profile
from tests.helpers import FlowThread, consume_all

SECRET = "pii-test-secret"
MIN = 60_000
T0 = 1_795_428_000_000
CHANNELS = ("web", "email", "mobile", "store", "call_center")

# Values that must never come out anywhere but the DLQ. Mixed case so the lowercase check matters.
EMAIL_KEY = "Planted.Keyholder@Example.ORG"       # Kafka key on the email channel
EMAIL_FIELD = "Planted.Fieldperson@Example.NET"   # `email` payload field
PHONE = "+49 170 5550199"
NAME = "Plantina Secretsdottir"
ADDRESS = "Geheimweg 77, 10115 Berlin"
NOTE = "Planted note: customer mentioned a private diagnosis"
COOKIE = "cookie-planted-7f3a9c"                   # raw identifier as Kafka key (web channel)
DEVICE = "device-planted-0b1e"                     # raw identifier as Kafka key (mobile channel)
CUSTOMER_ID = "CUST-PLANTED-4711"                  # raw identifier in `customer_id`
PLANTED = (EMAIL_KEY, EMAIL_FIELD, PHONE, NAME, ADDRESS, NOTE, COOKIE, DEVICE, CUSTOMER_ID)
# Only in a refused (garbage) message: must be in the DLQ and nowhere else.
GARBAGE_EMAIL = "Refused.Person@Example.COM"
GARBAGE_NAME = "Refusa Garbageson"


def needles(values: tuple[str, ...]) -> set[bytes]:
    out = set()
    for v in values:
        out |= {v.encode(), v.lower().encode(), v.upper().encode(), v.encode("utf-16-le")}
    return out


def pii_stream() -> list[tuple[str, bytes | None, bytes]]:
    pii = {"email": EMAIL_FIELD, "phone": PHONE, "name": NAME, "address": ADDRESS, "note": NOTE,
           "first_name": NAME.split()[0], "last_name": NAME.split()[1]}

    def ev(eid: str, etype: str, minute: int, **attrs: Any) -> bytes:
        return orjson.dumps({"event_id": eid, "type": etype, "ts": T0 + minute * MIN, **attrs})

    return [
        # The email channel: the Kafka key is the raw email address (id_type email by default).
        ("email", EMAIL_KEY.encode(), ev("p-1", "consent", 0, channel="email", granted=True, id_type="email", **pii)),
        ("email", EMAIL_KEY.encode(), ev("p-2", "email_open", 1, campaign_id="c-1", **pii)),
        ("email", EMAIL_KEY.encode(), ev("p-3", "email_click", 2, campaign_id="c-1", link_category="sale")),
        ("email", EMAIL_KEY.encode(), ev("p-3b", "purchase", 3, amount=50.0, id_type="email", **pii)),
        # Web: a cookie as key, PII in the payload, a cart that will be abandoned (decision on the clock):
        # added after every purchase of the identifiers the sign-in below links, which would cancel it.
        ("web", COOKIE.encode(), ev("p-4", "consent", 0, channel="email", granted=True, email=EMAIL_FIELD)),
        ("web", COOKIE.encode(), ev("p-5", "page_view", 1, page_type="product", category="shoes", **pii)),
        ("web", COOKIE.encode(), ev("p-6", "add_to_cart", 6, sku="sku-1", amount=80.0, **pii)),
        # Mobile: a device id; a purchase that triggers cross-sell (no consent: blocked, still no PII).
        ("mobile", DEVICE.encode(), ev("p-7", "app_purchase", 3, amount=99.0, phone=PHONE, name=NAME)),
        # Call center: customer_id in the payload and a free-text note; an unresolved call -> call back.
        ("call_center", b"agent-desk-1", ev("p-8", "call_center_contact", 4, customer_id=CUSTOMER_ID,
                                            topic="billing", outcome="unresolved", note=NOTE, address=ADDRESS)),
        ("store", CUSTOMER_ID.encode(), ev("p-9", "store_purchase", 5, amount=45.0, **pii)),
        # A sign-in links the cookie, the customer id, an email address and a phone number (identity
        # stitching): their keys are stored in the identity graph and the merged profile, never the values.
        ("web", COOKIE.encode(), ev("p-9b", "login", 7, customer_id=CUSTOMER_ID, email=EMAIL_FIELD, phone=PHONE,
                                    name=NAME)),
        # Refused: a schema violation carrying PII that appears nowhere else.
        ("web", GARBAGE_EMAIL.encode(), ev("p-10", "purchase", 6, amount="lots", email=GARBAGE_EMAIL,
                                           name=GARBAGE_NAME)),
    ]


def _processed() -> float:
    return sum(sum(metrics.counter_values(c).values())
               for c in (metrics.EVENTS, metrics.DUPLICATES, metrics.DEAD_LETTERS))


def _rocksdb_contents(state_dir: Path) -> bytes:
    """Every key and value of every store's RocksDB (profile shards of every family, the identity graph),
    decoded (undo records and metadata included)."""
    out = []
    shards = sorted(state_dir.rglob("shard-*"))
    assert any(s.parent.name == "identity" for s in shards) and any(s.parent.name.startswith("linked-") for s in shards)
    for shard in shards:
        opts = Options(raw_mode=True)
        db = Rdict(str(shard), opts, access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                out += [key, value]
        finally:
            db.close()
    return b"\n".join(out)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.broker
def test_no_pii_in_state_recovery_decisions_or_logs(kafka: dict[str, str], topic_prefix: str, tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    topics = {ch: f"{topic_prefix}.{ch}" for ch in CHANNELS}
    decisions_topic, dlq = f"{topic_prefix}.decisions", f"{topic_prefix}.dead_letter"
    control = f"{topic_prefix}.control"
    ensure_topics(kafka, {**{t: 1 for t in topics.values()}, decisions_topic: 2, dlq: 1, control: 1})
    stream = pii_stream()
    producer = Producer(kafka)
    for channel, key, value in stream:
        producer.produce(topics[channel], value, key)
    assert producer.flush(10) == 0

    config = Config().replace(
        kafka=kafka,
        topics={"inputs": tuple(topics.values()), "decisions": decisions_topic, "dead_letter": dlq,
                "control": control},
        state={"dir": str(tmp_path / "state"), "shards": 4},
        privacy={"secret": SECRET},
    )
    clock = ManualClock(T0 + 10 * MIN)
    log_stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("DEBUG", log_stream)
    try:
        start = _processed()
        with FlowThread(config, clock, tmp_path / "recovery") as flow:
            deadline = time.monotonic() + 60
            while _processed() - start < len(stream):
                assert not flow.failures and time.monotonic() < deadline, flow.failures
                time.sleep(0.1)
            clock.set(T0 + 80 * MIN)  # past the cart deadline: a decision fires on the clock
            deadline = time.monotonic() + 30
            while len(consume_all(kafka, [decisions_topic], idle_s=0.3)) < 3:
                assert not flow.failures and time.monotonic() < deadline, flow.failures
                time.sleep(0.3)
            # Leaving the block stops the input: Bytewax finishes and commits the epoch in progress (the
            # drain, tests/test_operations_broker.py), so the files read below hold everything applied.
        logging.getLogger("nextclick.test").info("marker after the run", extra={"planted_check": True})
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    captured = capfd.readouterr()

    # The flow did see the planted identifiers (as keyed hashes) and made decisions.
    state = tmp_path / "state"
    for id_type, raw in (("email", EMAIL_KEY), ("cookie", COOKIE), ("device", DEVICE), ("customer", CUSTOMER_ID)):
        assert read_profile(state, 4, pseudonymize(id_type, raw, SECRET.encode())) is not None, id_type
    decisions = consume_all(kafka, [decisions_topic])
    assert {orjson.loads(m.value())["reasons"]["rule_id"] for m in decisions} == {
        "cart_abandonment_email", "call_center_follow_up", "post_purchase_cross_sell"}
    logs = log_stream.getvalue()
    assert "marker after the run" in logs  # the JSON log stream really was captured

    places: dict[str, bytes] = {}
    places |= {f"state/{name}": data for name, data in _files(state).items()}
    places["state (decoded RocksDB)"] = _rocksdb_contents(state)
    places |= {f"recovery/{name}": data for name, data in _files(tmp_path / "recovery").items()}
    assert any(name.endswith(".sqlite3") for name in places), list(places)
    assert any("/MANIFEST" in name for name in places) and any(name.endswith(".log") for name in places)
    for i, m in enumerate(decisions):
        places[f"decision {i}"] = b"|".join([m.key() or b"", m.value() or b"",
                                              *(k.encode() + b"=" + v for k, v in m.headers() or [])])
    places["json logs"] = logs.encode()
    places["stdout"] = captured.out.encode()
    places["stderr"] = captured.err.encode()

    forbidden = needles(PLANTED + (GARBAGE_EMAIL, GARBAGE_NAME))
    leaks = [(where, needle) for where, data in places.items() for needle in forbidden if needle in data]
    assert leaks == []

    # The dead-letter topic keeps the refused message byte for byte (documented): the only place
    # the refused message's PII appears; the accepted messages' PII is not there.
    dead = consume_all(kafka, [dlq])
    assert len(dead) == 1
    assert (dead[0].key(), dead[0].value()) == (stream[-1][1], stream[-1][2])
    dlq_bytes = dead[0].value() + (dead[0].key() or b"") + b"".join(v for _, v in dead[0].headers())
    assert GARBAGE_EMAIL.encode() in dlq_bytes and GARBAGE_NAME.encode() in dlq_bytes
    assert GARBAGE_NAME.encode() not in b"".join(v for _, v in dead[0].headers())  # not quoted in the message
    assert [n for n in needles(PLANTED) if n in dlq_bytes] == []


# --- the secret ----------------------------------------------------------------------------------

def test_no_secret_outside_demo_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="privacy.secret"):
        PrivacyConfig().resolve_secret()
    assert PrivacyConfig(demo=True).resolve_secret()  # the demo default, clearly marked as such
    assert b"DO-NOT-USE-IN-PRODUCTION" in PrivacyConfig(demo=True).resolve_secret()
    with pytest.raises(ConfigError, match="cannot read"):
        PrivacyConfig(secret_file="/nonexistent/nextclick-hmac").resolve_secret()


@pytest.mark.broker
def test_run_refuses_to_start_without_a_secret(kafka: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTCLICK_")}
    env["NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS"] = kafka["bootstrap.servers"]
    env["NEXTCLICK_STATE__DIR"] = str(tmp_path / "state")
    env["NEXTCLICK_STATE__RECOVERY_DIR"] = str(tmp_path / "recovery")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nextclick", "run", "--broker-timeout", "5"], env=env,
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    # One JSON log line, then the one-line error (docs/operations.md, "Fatal errors").
    assert len(lines) == 2, proc.stderr
    assert lines[1].startswith("nextclick: error: ") and "privacy.secret" in lines[1]
    assert orjson.loads(lines[0])["error"] == lines[1][len("nextclick: error: "):]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "recovery").exists()  # refused before touching anything


# --- dead-letter redaction (off by default) -----------------------------------------------------

SRC = SourcePosition("shop.web", 0, 42)


def _dl(value: bytes | None) -> DeadLetter:
    return DeadLetter(b"k", value, (("origin", b"sdk"),), SRC, "schema_violation", "purchase: data.amount ...")


def test_redaction_is_off_by_default_and_keeps_bytes() -> None:
    value = b'{ "email" : "a@b.example",  "amount": "x" }'
    assert ParseConfig().redact_fields == ()
    key, out, headers = dead_letter_record(_dl(value))
    assert (key, out) == (b"k", value)
    assert headers == dead_letter_headers(_dl(value))


def test_redaction_replaces_top_level_fields_and_names_them() -> None:
    value = orjson.dumps({"event_id": "e1", "email": "a@b.example", "note": "private",
                          "nested": {"email": "kept@nested.example"}, "amount": "x"})
    key, out, headers = dead_letter_record(_dl(value), ("email", "note", "phone", "email"))
    assert key == b"k"
    assert orjson.loads(out or b"") == {"event_id": "e1", "email": "[redacted]", "note": "[redacted]",
                                         "nested": {"email": "kept@nested.example"}, "amount": "x"}
    assert headers[:-1] == dead_letter_headers(_dl(value))
    assert headers[-1] == (REDACTED_HEADER, b"email,note")


@pytest.mark.parametrize("value", [None, b"", b'{"email": "a@b"', b'["a@b.example"]', b'"a@b.example"',
                                   b'{"email": "caf\xe9"}', b'{"amount": 1}'])
def test_redaction_leaves_non_objects_and_objects_without_the_fields_unchanged(value: bytes | None) -> None:
    out, hit = redact_value(value, ("email",))
    assert out == value and hit == []
    assert all(name != REDACTED_HEADER for name, _ in dead_letter_record(_dl(value), ("email",))[2])


def test_redaction_fails_closed_on_values_it_cannot_rewrite() -> None:
    deep = b'{"email": "a@b.example", "x": ' + b"[" * 300 + b"]" * 300 + b"}"
    out, hit = redact_value(deep, ("email",))
    assert out == b'"[redacted]"' and hit == ["*"]


def test_redact_fields_from_toml_list_and_env_commas(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[parse]\nredact_fields = ["email", "phone"]\n')
    assert load_config(path, environ={}).parse.redact_fields == ("email", "phone")
    env = {"NEXTCLICK_PARSE__REDACT_FIELDS": "email, note ,,name"}
    assert load_config(None, environ=env).parse.redact_fields == ("email", "note", "name")
