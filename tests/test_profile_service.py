"""The profile view topic and `nextclick serve`, through the real broker.

The flow runs in a thread (tests/helpers.FlowThread) and writes the view topic at each epoch commit; the
service runs as its own process (`nextclick serve`), as in production, so it can be killed and
restarted. One story: an anonymous order, a login that links three identifiers, an erasure.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from confluent_kafka import Producer

from nextclick.flows.serve import RateLimiter, load_tokens
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config, ConfigError, load_config
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.io.topics import ensure_topics
from tests.helpers import FlowThread, consume_all

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "schemas" / "profile.v1.json").read_text())
SECRET = "profile-service-secret"
TOKEN = "tok-7c1e9b0a5d2f4e68"
T0 = 1_795_428_000_000
MIN = 60_000
COOKIE, CUSTOMER, EMAIL = "ck-svc-31", "C-7001", "dana.svc@example.com"
EPOCH_S = 0.5  # tests/helpers.FlowThread's epoch interval


def key(id_type: str, raw: str) -> str:
    return pseudonymize(id_type, raw, SECRET.encode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(base: str, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(base + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def wait(cond: Callable[[], Any], what: str, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = cond()
        except (urllib.error.URLError, ConnectionError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Service:
    """`nextclick serve` in a child process, its log in a file."""

    def __init__(self, config_file: Path, log: Path, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nextclick", "serve", "--config", str(config_file), "--log-level", "DEBUG"],
                cwd=REPO, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": str(REPO)})
        wait(lambda: self.process.poll() is None and get(self.base, "/readyz", None)[0] == 200, "the service ready")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture()
def setup(kafka: dict[str, str], topic_prefix: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    topics = {"web": f"{topic_prefix}.web", "decisions": f"{topic_prefix}.decisions",
              "dead_letter": f"{topic_prefix}.dlq", "control": f"{topic_prefix}.control",
              "profiles": f"{topic_prefix}.profiles"}
    ensure_topics(kafka, {**{t: 1 for t in topics.values()}, topics["profiles"]: 2})
    config = Config().replace(
        kafka=kafka,
        topics={"inputs": (topics["web"],), "decisions": topics["decisions"], "dead_letter": topics["dead_letter"],
                "control": topics["control"], "profiles": topics["profiles"]},
        state={"dir": str(tmp_path / "state"), "shards": 2},
        privacy={"secret": SECRET},
    )
    (tmp_path / "tokens").write_text(f"# the call center\n{TOKEN}\n")
    port = free_port()

    def service_config(store: str) -> Path:
        path = tmp_path / f"serve-{store}.toml"
        path.write_text(f"""
[kafka]
"bootstrap.servers" = "{kafka['bootstrap.servers']}"
[topics]
profiles = "{topics['profiles']}"
[privacy]
secret = "{SECRET}"
[serve]
address = "127.0.0.1:{port}"
token_file = "{tmp_path / 'tokens'}"
store_dir = "{tmp_path / store}"
rate_limit = 0
""")
        return path

    yield {"kafka": kafka, "topics": topics, "config": config, "service_config": service_config, "port": port,
           "tmp": tmp_path}


def send(kafka: dict[str, str], topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    producer = Producer(kafka)
    for kafka_key, body in records:
        producer.produce(topic, orjson.dumps(body), kafka_key.encode())
    assert producer.flush(10) == 0


def event(eid: str, etype: str, minute: float, **fields: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": etype, "ts": T0 + int(minute * MIN), **fields}


def view_records(kafka: dict[str, str], topic: str) -> list[tuple[str, dict[str, Any] | None]]:
    return [(m.key().decode(), None if m.value() is None else orjson.loads(m.value()))
            for m in consume_all(kafka, [topic], idle_s=0.5, timeout_s=10)]


def test_an_order_then_a_link_then_an_erasure_as_the_service_answers_them(setup: dict[str, Any]) -> None:
    kafka, topics, tmp = setup["kafka"], setup["topics"], setup["tmp"]
    log = tmp / "serve.log"
    service = Service(setup["service_config"]("store"), log, setup["port"])
    base = service.base
    try:
        with FlowThread(setup["config"], ManualClock(T0 + 10 * MIN), tmp / "recovery") as flow:
            # Without a token, or with a wrong one: 401, whatever the identifier.
            assert get(base, f"/v1/profiles/cookie/{COOKIE}", None)[0] == 401
            assert get(base, f"/v1/profiles/cookie/{COOKIE}", "not-the-token")[0] == 401
            # Guessing tokens is slowed down per address (a consumer probe: 300 wrong tokens, 300 answers
            # of 401); a valid token is not held back by it.
            guesses = [get(base, f"/v1/profiles/cookie/{COOKIE}", f"guess-{i}") for i in range(15)]
            assert {status for status, _ in guesses} == {401, 429}
            assert guesses[-1] == (429, {"error": "rate_limited",
                                         "message": "too many requests without a valid token from this address"})
            assert get(base, f"/v1/profiles/cookie/{COOKIE}")[0] == 404  # unknown: JSON 404

            # The flow and the service running (another visitor's page view through both), then an anonymous
            # web order: the profile appears, with the order, within an epoch and a second.
            send(kafka, topics["web"], [("ck-warm-up", event("w1", "page_view", 0, page_type="home"))])
            wait(lambda: get(base, "/v1/profiles/cookie/ck-warm-up")[0] == 200, "the flow and the service running")
            sent = time.monotonic()
            send(kafka, topics["web"], [(COOKIE, event("s1", "purchase", 1, order_id="ord-1", amount=59.9,
                                                       currency="eur", category="shoes", name="Dana Svc"))])
            status, profile = wait(lambda: (r := get(base, f"/v1/profiles/cookie/{COOKIE}"))[0] == 200 and r,
                                   "the order in the service")
            staleness = time.monotonic() - sent
            print(f"order visible in the service after {staleness:.3f} s")
            assert staleness <= EPOCH_S + 1.0, staleness  # the bound: one epoch and a second
            jsonschema.validate(profile, SCHEMA)
            assert profile["recent_orders"] == [{"ts": T0 + MIN, "order_id": "ord-1", "amount": 59.9,
                                                 "currency": "EUR", "channel": "web", "category": "shoes"}]
            assert profile["attributes"]["last_order_channel"] == "web"
            assert profile["ids"] == {"cookie": [key("cookie", COOKIE)]}
            anonymous = profile["profile_key"]

            # The visitor logs in: cookie, customer id and email are one profile, found by each.
            send(kafka, topics["web"], [(COOKIE, event("s2", "login", 2, customer_id=CUSTOMER, email=EMAIL,
                                                       method="password"))])
            linked = wait(lambda: (r := get(base, f"/v1/profiles/customer/{CUSTOMER}"))[0] == 200 and r[1],
                          "the linked profile")
            assert linked["profile_key"] == f"linked_customer/{key('customer', CUSTOMER)}"
            assert linked["id_counts"] == {"cookie": 1, "customer": 1, "email": 1}
            assert linked["recent_orders"][0]["order_id"] == "ord-1" and linked["version"] == 2
            for id_type, raw in (("cookie", COOKIE), ("email", EMAIL)):
                assert get(base, f"/v1/profiles/{id_type}/{raw}") == (200, linked)
            records = view_records(kafka, topics["profiles"])
            assert (anonymous, None) in records  # the absorbed profile's tombstone
            answers = {t: get(base, f"/v1/profiles/{t}/{r}") for t, r in
                       (("cookie", COOKIE), ("customer", CUSTOMER), ("email", EMAIL))}

            # Killed and restarted on its store, and started on an empty one: the same answers.
            service.kill()
            service = Service(setup["service_config"]("store"), log, setup["port"])
            assert {t: get(base, f"/v1/profiles/{t}/{r}") for t, r in
                    (("cookie", COOKIE), ("customer", CUSTOMER), ("email", EMAIL))} == answers
            service.stop()
            service = Service(setup["service_config"]("fresh-store"), log, setup["port"])
            assert {t: get(base, f"/v1/profiles/{t}/{r}") for t, r in
                    (("cookie", COOKIE), ("customer", CUSTOMER), ("email", EMAIL))} == answers

            # An erasure: 404 by every identifier within an epoch and a second, and a tombstone.
            sent = time.monotonic()
            send(kafka, topics["control"], [("erase", {"command": "erase", "request_id": "dsr-1",
                                                       "customer_id": CUSTOMER})])
            wait(lambda: get(base, f"/v1/profiles/email/{EMAIL}")[0] == 404, "the erasure in the service")
            erased_in = time.monotonic() - sent
            print(f"erasure answered 404 after {erased_in:.3f} s")
            assert erased_in <= EPOCH_S + 1.0, erased_in
            for id_type, raw in (("cookie", COOKIE), ("customer", CUSTOMER)):
                assert get(base, f"/v1/profiles/{id_type}/{raw}")[0] == 404
            assert not flow.failures
        records = view_records(kafka, topics["profiles"])
        mine = [body for k, body in records if k == linked["profile_key"]]
        assert mine[-1] is None and mine[0] is not None  # the erased profile's last record is its tombstone
        # The service's own store keeps none of it in its files either (a consumer probe found the erased
        # record in its write-ahead log and tables): the tombstone says "erased", and the store is purged.
        wait(lambda: "purged the store of erased profiles" in log.read_text(), "the service's purge")
        files = [p for p in (tmp / "fresh-store").rglob("*") if p.is_file()]
        assert files and [p.name for p in files if b"ord-1" in p.read_bytes()] == []

        # An erasure with the flow stopped (`nextclick profile erase`) writes the tombstones itself.
        assert get(base, "/v1/profiles/cookie/ck-warm-up")[0] == 200
        flow_toml = tmp / "flow.toml"
        flow_toml.write_text(f"""
[kafka]
"bootstrap.servers" = "{kafka['bootstrap.servers']}"
[topics]
inputs = ["{topics['web']}"]
decisions = "{topics['decisions']}"
dead_letter = "{topics['dead_letter']}"
control = "{topics['control']}"
profiles = "{topics['profiles']}"
[state]
dir = "{tmp / 'state'}"
recovery_dir = "{tmp / 'recovery'}"
shards = 2
[privacy]
secret = "{SECRET}"
""")
        from nextclick.flows.cli import main as cli_main

        assert cli_main(["profile", "erase", "ck-warm-up", "--id-type", "cookie", "--config", str(flow_toml)]) == 0
        wait(lambda: get(base, "/v1/profiles/cookie/ck-warm-up")[0] == 404, "the offline erasure in the service")
        assert (f"profiles/{key('cookie', 'ck-warm-up')}", None) in view_records(kafka, topics["profiles"])
        for _, body in records:
            if body is not None:
                jsonschema.validate(body, SCHEMA)
    finally:
        service.stop()
    # Neither the token nor a raw identifier nor any PII reached the service's log or the topic.
    text = log.read_bytes()
    assert b'"route"' in text  # requests were logged (DEBUG), by route
    topic_bytes = b"".join(m.value() or b"" for m in consume_all(kafka, [topics["profiles"]]))
    for secret in (TOKEN, COOKIE, CUSTOMER, EMAIL, "Dana Svc"):
        assert secret.encode() not in text, secret
        assert secret.encode() not in topic_bytes, secret


def test_requests_the_parser_refuses_leave_no_identifier_or_token_in_the_log_and_every_route_answers_json(
        setup: dict[str, Any]) -> None:
    """A path or a header over aiohttp's 8,190-byte line limit makes aiohttp log the refused bytes: the
    raw identifier in the path, or a token beside a padded header. None of it may reach the log."""
    log = setup["tmp"] / "serve.log"
    service = Service(setup["service_config"]("store"), log, setup["port"])
    base, port = service.base, setup["port"]
    try:
        padded = [(f"/v1/profiles/email/{EMAIL}?pad={'p' * 9000}", {"Authorization": f"Bearer {TOKEN}"}),
                  (f"/v1/profiles/email/{EMAIL}", {"Authorization": f"Bearer {TOKEN}", "X-Pad": TOKEN + "q" * 9000}),
                  (f"/v1/profiles/email/{EMAIL}", {"Authorization": f"Bearer {TOKEN}{'r' * 9000}"})]
        answers = []
        for path, headers in padded:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            assert response.status == 400
            answers.append(response.read())
        # Not HTTP at all: a method or a version the parser refuses, the identifier in the request line.
        for line in (f"GE\x01T /v1/profiles/email/{EMAIL} HTTP/1.1", f"GET /v1/profiles/email/{EMAIL} HTTP/9.x"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(f"{line}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
                answer = b"".join(iter(lambda: raw.recv(65536), b""))
            assert answer.split(b" ", 2)[1] == b"400", answer[:80]
            answers.append(answer)
        # The answers name the status, never the bytes refused (aiohttp's own text quoted them).
        assert all(b"400 Bad Request: not a request this service reads" in answer for answer in answers), answers
        for secret in (TOKEN, EMAIL, "ppppp", "qqqqq", "rrrrr"):
            assert not any(secret.encode() in answer for answer in answers), secret
        assert get(base, "/v1/nowhere") == (404, {"error": "not_found", "message": "Not Found"})
        request = urllib.request.Request(base + f"/v1/profiles/email/{EMAIL}", method="DELETE",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET,HEAD"
        assert orjson.loads(refused.value.read()) == {"error": "method_not_allowed", "message": "Method Not Allowed"}
        assert get(base, "/healthz", None) == (200, {"status": "ok"})
    finally:
        service.stop()
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    # The address bound, in the log (with `:0`, the port chosen): aiohttp's own banner is not printed.
    assert [line["addresses"] for line in lines if line["msg"] == "profile service listening"] == \
        [[f"http://127.0.0.1:{port}"]]
    refusals = [line for line in lines if line["logger"] == "aiohttp.server"]
    assert [(r["level"], r["msg"], r["error"], r["status"]) for r in refusals] == \
        [("warning", "request refused by the HTTP parser", "LineTooLong", 400)] * 3 + \
        [("warning", "request refused by the HTTP parser", error, 400) for error in ("BadHttpMethod", "BadStatusLine")]
    text = log.read_bytes()
    for secret in (TOKEN, EMAIL, "ppppp", "qqqqq", "rrrrr"):
        assert secret.encode() not in text, secret
    assert b"Traceback" not in text


def decisions(kafka: dict[str, str], topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in consume_all(kafka, [topic], idle_s=0.5, timeout_s=10)]


def timeless(answer: dict[str, Any]) -> dict[str, Any]:
    """A next-best-action answer without what moves with the clock (when it was judged, the expiry)."""
    return {**answer, "judged_at": 0, "action": answer["action"] and {**answer["action"], "expires_at": 0}}


def test_next_best_action_for_a_call_is_the_rule_that_would_fire_and_emits_nothing(setup: dict[str, Any]) -> None:
    kafka, topics, tmp = setup["kafka"], setup["topics"], setup["tmp"]
    now = time.time_ns() // 1_000_000  # the service judges at its own clock: the events are recent ones
    service = Service(setup["service_config"]("store"), tmp / "serve.log", setup["port"])
    base, who = service.base, "C-NBA-1"
    path = f"/v1/profiles/customer/{who}/next-best-action"
    try:
        with FlowThread(setup["config"], ManualClock(now), tmp / "recovery") as flow:
            # A web order and a resolved call, through the flow: the follow-up did not fire.
            send(kafka, topics["web"], [
                (who, {"event_id": "n1", "type": "purchase", "ts": now - 5 * MIN, "customer_id": who,
                       "order_id": "ord-n1", "amount": 42.0, "currency": "EUR"}),
                (who, {"event_id": "n2", "type": "call_center_contact", "ts": now - 4 * MIN, "customer_id": who,
                       "topic": "delivery", "outcome": "resolved"})])
            wait(lambda: (r := get(base, f"/v1/profiles/customer/{who}"))[0] == 200 and r[1]["version"] == 2,
                 "the profile in the service")
            before = decisions(kafka, topics["decisions"])
            assert not [d for d in before if d["reasons"]["rule_id"] == "call_center_follow_up"]

            # The representative asks, while the call is unresolved: the call-back, and why.
            status, answer = get(base, f"{path}?channel=call_center&outcome=unresolved&topic=delivery")
            assert status == 200, answer
            assert answer["action"]["rule"] == "call_center_follow_up" and answer["action"]["action"] == "call_back"
            assert [(c["rule"], c["outcome"]) for c in answer["candidates"]] == [("call_center_follow_up", "fires")]
            # Nothing emitted, nothing written: no decision arrives, the profile is as it was, and asking again
            # (after an epoch) gives the same answer: no cooldown or cap was used.
            time.sleep(2 * EPOCH_S)
            assert decisions(kafka, topics["decisions"]) == before
            assert get(base, f"/v1/profiles/customer/{who}")[1]["recent_decisions"] == {"rules": {}, "channels": {}}
            again = get(base, f"{path}?channel=call_center&outcome=unresolved&topic=delivery")[1]
            assert timeless(again) == timeless(answer)

            # Same auth as the profile; a channel the rules do not know: a JSON 400 with one line.
            assert get(base, f"{path}?channel=call_center", None)[0] == 401
            status, error = get(base, f"{path}?channel=fax")
            assert status == 400 and error["error"] == "bad_request" and "channel must be one of" in error["message"]
            assert get(base, "/v1/profiles/customer/nobody/next-best-action?channel=call_center")[0] == 404

            # A real unresolved call: the flow decides the call-back, and next-best-action now says its
            # cooldown holds.
            send(kafka, topics["web"], [(who, {"event_id": "n3", "type": "call_center_contact", "ts": now - MIN,
                                               "customer_id": who, "outcome": "unresolved"})])
            wait(lambda: (r := get(base, f"/v1/profiles/customer/{who}"))[0] == 200 and r[1]["version"] == 3,
                 "the call in the service")
            fired = [d for d in decisions(kafka, topics["decisions"]) if d not in before]
            assert [d["reasons"]["rule_id"] for d in fired] == ["call_center_follow_up"]
            answer = get(base, f"{path}?channel=call_center&outcome=unresolved")[1]
            assert answer["action"] is None
            assert [(c["rule"], c["outcome"], c["reason"]) for c in answer["candidates"]] == [
                ("call_center_follow_up", "blocked", "cooldown")]
            assert "/v1/profiles/{id_type}/{id}/next-best-action" in get(base, "/openapi.json", None)[1]["paths"]
            assert not flow.failures
    finally:
        service.stop()


def test_serve_and_profile_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[serve]\naddress = "127.0.0.1:9000"\ntoken_file = "t"\n'
                    '[profile]\nrecent_orders = 5\nrecent_orders_max_age = "90d"\n')
    config = load_config(path, environ={})
    assert config.serve.address == "127.0.0.1:9000" and config.profile.recent_orders_max_age_ms == 90 * 86_400_000
    path.write_text('[profile]\nrecent_orders_max_age = "soon"\n')
    with pytest.raises(ConfigError, match="recent_orders"):
        load_config(path, environ={})
    (tmp_path / "tokens").write_text("# comment\n\n  abc  \n")
    assert load_tokens(str(tmp_path / "tokens")) == frozenset({"abc"})
    (tmp_path / "inline").write_text("abc\ntok # the call center's\n")
    with pytest.raises(ConfigError, match=r"line 2: a token holds no spaces \(a # comment goes on its own line\)"):
        load_tokens(str(tmp_path / "inline"))
    (tmp_path / "empty").write_text("# none\n")
    for missing in ("", str(tmp_path / "empty"), str(tmp_path / "absent")):
        with pytest.raises(ConfigError):
            load_tokens(missing)


def test_the_rate_limiter_allows_bursts_of_twice_the_rate_then_refuses() -> None:
    limiter = RateLimiter(5.0)
    allowed: list[Any] = [limiter.allow("a") for _ in range(20)]
    assert allowed.count(True) == 10 and limiter.allow("b")
    assert RateLimiter(0).allow("a")


def test_topics_create_makes_the_view_topic_compacted(kafka: dict[str, str], topic_prefix: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    from nextclick.flows.cli import main as cli_main

    p = topic_prefix
    for k, v in {"NEXTCLICK_TOPICS__INPUTS": f"{p}.web", "NEXTCLICK_TOPICS__DECISIONS": f"{p}.dec",
                 "NEXTCLICK_TOPICS__DEAD_LETTER": f"{p}.dlq", "NEXTCLICK_TOPICS__CONTROL": f"{p}.control",
                 "NEXTCLICK_TOPICS__PROFILES": f"{p}.profiles", "NEXTCLICK_TOPICS__PROFILES_PARTITIONS": "3"}.items():
        monkeypatch.setenv(k, v)
    assert cli_main(["topics", "create", "--bootstrap", kafka["bootstrap.servers"]]) == 0
    report = {t["topic"]: t for t in orjson.loads(capsys.readouterr().out)["topics"]}
    assert report[f"{p}.profiles"]["role"] == "profiles" and report[f"{p}.profiles"]["status"] == "created"
    admin = AdminClient(client_config(kafka))
    assert len(admin.list_topics(timeout=10).topics[f"{p}.profiles"].partitions) == 3
    ((_, future),) = admin.describe_configs([ConfigResource("topic", f"{p}.profiles")]).items()
    assert future.result()["cleanup.policy"].value == "compact"


def test_the_demos_service_prints_curl_lines_that_answer_for_its_persona(kafka: dict[str, str], topic_prefix: str,
                                                                         tmp_path: Path) -> None:
    import io
    import shlex

    from nextclick.flows.demo import SERVE_PERSONA, ProfileService
    from nextclick.operators.infra.config import DEMO_SECRET
    from nextclick.operators.io.profile_view import view_record
    from tests.helpers import Customer

    topic = f"{topic_prefix}.profiles"
    ensure_topics(kafka, {topic: 1})
    who = pseudonymize("customer", SERVE_PERSONA, DEMO_SECRET.encode())
    customer = Customer(customer=who)
    now = time.time_ns() // 1_000_000
    customer.send("purchase", now - 7 * 24 * 60 * MIN, order_id="o-demo", amount=40.1)
    customer.profile.ids = {"customer": [who]}
    rkey, value = view_record(f"linked_customer/{who}", customer.profile, customer.ruleset, now)
    producer = Producer(kafka)
    producer.produce(topic, value, rkey)
    assert producer.flush(10) == 0
    out = io.StringIO()
    service = ProfileService(Config().replace(kafka=kafka, topics={"profiles": topic}), tmp_path, out)
    try:
        service.announce()
        wait(lambda: get(service.base, f"/v1/profiles/customer/{SERVE_PERSONA}",
                         service.token_file.read_text().strip())[0] == 200, "the persona in the service")
        lines = [line.strip() for line in out.getvalue().splitlines() if line.strip().startswith("curl ")]
        assert len(lines) == 2
        for line in lines:  # what the printed line asks for, with the token its file holds
            words = shlex.split(line.replace("$(cat ", "").replace(")", ""))
            header, url = words[words.index("-H") + 1], words[-1]
            token_file = header.removeprefix("Authorization: Bearer ")
            status, body = get(service.base, url.removeprefix(service.base), Path(token_file).read_text().strip())
            assert status == 200, body
        service.show()
        shown = out.getvalue()
        assert shown.count("[HTTP 200]") == 2 and '"order_id":"o-demo"' in shown
        assert '"action":{"rule":"call_center_follow_up"' in shown
    finally:
        service.stop()
    assert service.process is None
