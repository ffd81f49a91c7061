"""`nextclick serve`: the profile query service, for the application at the moment of an interaction.

It reads the profile view topic (`[topics] profiles`, operators/io/profile_view.py) into its own RocksDB
(operators/io/view_index.py), indexed by every identifier key, and answers over HTTP (aiohttp):

    GET /v1/profiles/{id_type}/{id}   the profile holding that identifier (Bearer token), JSON 404 if none
    GET /v1/profiles/{id_type}/{id}/next-best-action?channel=call_center
                                      the rules judged for an interaction on that channel now, and why;
                                      no side effects (operators/tools/next_best_action.py)
    GET /healthz                      the process answers
    GET /readyz                       200 once the store has caught up with the topic as it was at start
    GET /metrics                      Prometheus text
    GET /openapi.json                 the OpenAPI description

The raw identifier is hashed with the deployment's secret, as the flow hashes it; neither it nor a
token is ever logged (aiohttp's access log, which prints the path, is off, and its error records lose
the message that would quote them: `HttpErrorLog`). Replicas each read the
whole topic: any of them answers for any customer. What it shows is as of the last epoch commit.

The token file is read again when it changes (TokenFile). Connections that send no whole request in
KEEPALIVE_TIMEOUT_S are closed, at most MAX_CONNECTIONS are held, and accept errors of a process out
of file descriptors are one log line in a while (AcceptErrorLog). Every answer is JSON, a bug's 500 too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nextclick.operators.channels import CHANNELS, ID_TYPES
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.clock import Clock, SystemClock
from nextclick.operators.infra.config import Config, ConfigError
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.io.profile_view import is_erasure
from nextclick.operators.io.view_index import ViewIndex
from nextclick.operators.profile.facts import configure_orders
from nextclick.operators.rules.loader import load_configured_rules
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.tools.next_best_action import INTERACTIONS, RESERVED, NextBestActionError, judge

log = logging.getLogger("nextclick.serve")

_PROFILE_ROUTE = "/v1/profiles/{id_type}/{id}"
_NBA_ROUTE = "/v1/profiles/{id_type}/{id}/next-best-action"
_OPEN = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def load_tokens(path: str) -> frozenset[str]:
    """The accepted bearer tokens: one a line, blank lines and # comments skipped. None is refused."""
    if not path:
        raise ConfigError("[serve].token_file is required: the service answers only with a bearer token")
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"[serve].token_file: cannot read {path}: {exc.strerror}") from None
    tokens = frozenset(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    for number, line in enumerate(lines, 1):
        token = line.strip()
        if token and not token.startswith("#") and any(c.isspace() for c in token):
            # `tok # note` would make "tok # note" the token and refuse every client sending "tok".
            raise ConfigError(f"[serve].token_file: {path} line {number}: a token holds no spaces (a # comment "
                              "goes on its own line)")
    if not tokens:
        raise ConfigError(f"[serve].token_file: {path} holds no token")
    return tokens


# How often, at most, a request looks whether the token file changed (a rotated Kubernetes Secret).
TOKEN_CHECK_EVERY_S = 1.0


def _file_version(path: str) -> tuple[int, ...] | str:
    """What changes when the file is rewritten or replaced: the stat of the path, symlinks followed (a
    Secret volume's update swaps the `..data` symlink), or why it cannot be read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class TokenFile:
    """The token file's tokens, read again when the file changes (looked at no more than once every
    `every_s`, on a request). A file that becomes unreadable, empty or invalid keeps the tokens read
    before, with one error line per change (never a token)."""

    def __init__(self, path: str, *, every_s: float = TOKEN_CHECK_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self._every, self._clock = path, every_s, clock
        self._version = _file_version(path)  # before reading: a change while it is read is seen next time
        self.tokens = load_tokens(path)
        self._checked = clock()

    def current(self) -> frozenset[str]:
        now = self._clock()
        if now - self._checked >= self._every:
            self._checked = now
            version = _file_version(self.path)
            if version != self._version:
                self._version = version
                self._reload()
        return self.tokens

    def _reload(self) -> None:
        try:
            tokens = load_tokens(self.path)
        except ConfigError as exc:  # its message names the path and the line, never a token
            log.error("token file not reloaded: the previous tokens stay accepted", extra={"reason": str(exc)})
            return
        if tokens != self.tokens:
            self.tokens = tokens
            log.info("token file reloaded", extra={"tokens": len(tokens)})


class Metrics:
    """The service's own registry (the flow's metrics are another process's)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("nextclick_serve_requests_total", "Requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.seconds = Histogram("nextclick_serve_request_seconds", "Time to answer, by route", ["route"],
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5),
                                 registry=self.registry)
        self.records = Counter("nextclick_serve_view_records_total", "Profile view records applied",
                               registry=self.registry)
        self.lag = Gauge("nextclick_serve_view_lag_records", "Records on the view topic not yet applied",
                         registry=self.registry)
        self.ready = Gauge("nextclick_serve_ready", "1 once caught up with the view topic", registry=self.registry)


@dataclass
class _Bucket:
    tokens: float
    at: float


_MAX_BUCKETS = 100_000
# Requests a second with a missing or wrong token, per caller address, before 429: guessing tokens is
# slowed down, and a client with a stale token is told so without crowding out the others.
FAILED_AUTH_RATE = 5.0


@dataclass
class RateLimiter:
    """A token bucket per client credential: `rate` requests a second, bursts of twice that."""

    rate: float
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        depth = 2 * self.rate
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= _MAX_BUCKETS:  # many callers (addresses): forget them all, not the memory
                self.buckets.clear()
            bucket = self.buckets[client] = _Bucket(depth, now)
        bucket.tokens = min(depth, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


# An erasure's purge rewrites the whole store: erasures read within this of one another share one.
PURGE_EVERY_S = 5.0


class ViewReader:
    """Reads the view topic into the index, from where the index left off; says when it has caught up."""

    def __init__(self, kafka: dict[str, str], topic: str, index: ViewIndex, metrics: Metrics) -> None:
        self.topic, self.index, self.metrics = topic, index, metrics
        self._consumer = Consumer(client_config(kafka, **{
            "group.id": f"nextclick-serve-{topic}", "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": False}))
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="view-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(30)
        self._consumer.close()

    def _partitions(self) -> list[int]:
        while not self.stop.is_set():
            meta = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                return sorted(meta.partitions)
            log.warning("profile view topic not there yet, retrying", extra={"topic": self.topic})
            self.stop.wait(2.0)
        return []

    def _run(self) -> None:
        try:
            self._read()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; the process stays up
            self.failure = type(exc).__name__
            log.error("profile view reader stopped", extra={"topic": self.topic, "exception": type(exc).__name__})

    def _read(self) -> None:
        consumer, index, topic = self._consumer, self.index, self.topic
        partitions = self._partitions()
        stored = index.offsets()
        consumer.assign([TopicPartition(topic, p, stored.get(p, OFFSET_BEGINNING)) for p in partitions])
        # Caught up: every partition read up to where it ended when the service started.
        target = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        position = {p: stored.get(p, 0) for p in partitions}
        started = time.monotonic()
        erased, purged_at = 0, 0.0
        while not self.stop.is_set():
            messages = consumer.consume(500, 0.2)
            batch = []
            for m in messages:
                error = m.error()
                if error is not None:
                    log.warning("profile view read error", extra={"error": error.str()})
                    continue
                partition, offset = m.partition(), m.offset()
                assert partition is not None and offset is not None  # a message, not an event
                value = m.value()
                batch.append((partition, offset, m.key() or b"", value))
                position[partition] = offset + 1
                if value is None and is_erasure(m.headers()):
                    erased += 1
            if batch:
                self.metrics.records.inc(index.apply(batch))
            if erased and self.ready.is_set() and time.monotonic() - purged_at >= PURGE_EVERY_S:
                # As the flow's shards do after an erasure: no file of the store keeps the erased bytes.
                # (Reading the topic from the start, the erasures in it share one purge once caught up.)
                index.purge()
                purged_at = time.monotonic()
                log.info("purged the store of erased profiles", extra={"erased": erased})
                erased = 0
            lag = 0
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True) or (0, 0)
                lag += max(0, high - position[p]) if high >= 0 else 0
            self.metrics.lag.set(lag)
            if not self.ready.is_set() and all(position[p] >= target[p] or self._at_end(p, target[p])
                                               for p in partitions):
                self.ready.set()
                self.metrics.ready.set(1)
                log.info("profile view caught up", extra={"topic": topic, "profiles": index.count(),
                                                          "seconds": round(time.monotonic() - started, 3)})

    def _at_end(self, partition: int, target: int) -> bool:
        """A compacted partition can end on offsets no record holds: caught up once the consumer is there."""
        try:
            (tp,) = self._consumer.position([TopicPartition(self.topic, partition)])
        except KafkaException:
            return False
        return tp.offset >= target


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def query_is_utf8(raw_query: str) -> bool:
    """Whether the query string's %-escapes are UTF-8 (`%ff` is not: yarl would read it as U+FFFD, and
    the attribute would be judged with a character the caller never sent)."""
    try:
        unquote_to_bytes(raw_query).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build_app(config: Config, index: ViewIndex, reader: ViewReader | None, metrics: Metrics,
              tokens: frozenset[str] | TokenFile, secret: bytes, ruleset: RuleSet | None = None,
              clock: Clock | None = None) -> web.Application:
    """The HTTP application (no network here: `serve` runs it). `tokens`: fixed, or a TokenFile read
    again when it changes; `ruleset`: the flow's rules, which next-best-action judges (default: `[flow]
    rules_file`); `clock`: its "now" (default: the system's)."""
    ruleset = ruleset or load_configured_rules(config)  # flow.rules_file with flow.tracking_plan, as the flow
    clock = clock or SystemClock()
    limiter = RateLimiter(config.serve.rate_limit)
    refused = RateLimiter(FAILED_AUTH_RATE)  # per caller address, requests without a valid token
    source = tokens if isinstance(tokens, TokenFile) else None
    accepted = tokens.tokens if isinstance(tokens, TokenFile) else tokens
    encoded = [t.encode() for t in accepted]

    def authorized(request: web.Request) -> str | None:
        """A short, irreversible name of the caller's token (the rate limiter's key), or None."""
        nonlocal accepted, encoded
        if source is not None and source.current() is not accepted:
            accepted = source.tokens
            encoded = [t.encode() for t in accepted]
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        raw = given.strip().encode()
        ok = False
        for token in encoded:  # compare with every token, so the time says nothing of which matched
            ok |= hmac.compare_digest(raw, token)
        return hashlib.sha256(raw).hexdigest()[:12] if ok else None

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unknown"
        try:
            response = await _answer(request, handler)
        except web.HTTPException as exc:  # no such route or method: JSON, like every other answer
            response = _json({"error": exc.reason.lower().replace(" ", "_"), "message": exc.reason}, exc.status)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception as exc:  # noqa: BLE001 - a bug: a JSON 500, counted, logged without its message
            # The message may quote a value (an identifier); the frames name code only.
            log.error("request failed", extra={"route": route, "error": type(exc).__name__,
                                               "frames": "".join(traceback.format_tb(exc.__traceback__))})
            response = _json({"error": "internal_error", "message": "the service failed to answer"}, 500)
        elapsed = time.perf_counter() - started
        metrics.requests.labels(route, str(response.status)).inc()
        metrics.seconds.labels(route).observe(elapsed)
        # The route, never the path (it holds the raw identifier) nor any header (the token).
        log.debug("request", extra={"method": request.method, "route": route, "status": response.status,
                                    "ms": round(elapsed * 1000, 3)})
        return response

    async def _answer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in _OPEN:
            return await handler(request)
        caller = authorized(request)
        if caller is None:
            if not refused.allow(request.remote or ""):
                response = _json({"error": "rate_limited", "message": "too many requests without a valid token "
                                  "from this address"}, 429)
                response.headers["Retry-After"] = "1"
                return response
            response = _json({"error": "unauthorized", "message": "a valid Authorization: Bearer token is "
                              "required"}, 401)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if not limiter.allow(caller):
            response = _json({"error": "rate_limited", "message": "too many requests"}, 429)
            response.headers["Retry-After"] = "1"
            return response
        return await handler(request)

    def find(request: web.Request) -> bytes | web.Response:
        """The view record of the profile holding the path's identifier, or the error to answer with."""
        id_type, raw_id = request.match_info["id_type"], request.match_info["id"]
        if id_type not in ID_TYPES:
            return _json({"error": "unknown_id_type", "message": f"id_type must be one of {sorted(ID_TYPES)}"}, 400)
        record = index.lookup(id_type, pseudonymize(id_type, raw_id, secret))
        if record is None:
            return _json({"error": "not_found", "message": "no profile holds this identifier"}, 404)
        return record

    async def get_profile(request: web.Request) -> web.Response:
        record = find(request)
        if isinstance(record, web.Response):
            return record
        return web.Response(body=record, content_type="application/json")

    async def next_best_action(request: web.Request) -> web.Response:
        if not query_is_utf8(request.rel_url.raw_query_string):
            return _json({"error": "bad_request", "message": "the query string must be UTF-8 (a %-escape of "
                          "bytes that are not UTF-8)"}, 400)
        query = request.query
        channel = query.get("channel")
        if not channel:
            return _json({"error": "bad_request", "message": "the query parameter channel is required "
                          f"(e.g. channel=call_center; interactions: {sorted(INTERACTIONS)})"}, 400)
        if any(len(query.getall(name)) > 1 for name in query):
            return _json({"error": "bad_request", "message": "each query parameter at most once"}, 400)
        record = find(request)
        if isinstance(record, web.Response):
            return record
        attributes = {k: v for k, v in query.items() if k not in RESERVED}
        try:
            answer = judge(orjson.loads(record), ruleset, channel, attributes, clock.now_ms(),
                           event_type=query.get("event"), parse=config.parse)
        except NextBestActionError as exc:
            return _json({"error": "bad_request", "message": str(exc)}, 400)
        return _json(answer)

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if reader is not None and reader.failure is not None:
            return _json({"status": "failed", "reason": reader.failure}, 503)
        if reader is None or reader.ready.is_set():
            return _json({"status": "ready"})
        return _json({"status": "catching_up"}, 503)

    async def metrics_text(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_json(request: web.Request) -> web.Response:
        return _json(OPENAPI)

    app = web.Application(middlewares=[guard])
    app.router.add_get(_PROFILE_ROUTE, get_profile)
    app.router.add_get(_NBA_ROUTE, next_best_action)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/openapi.json", openapi_json)
    return app


def _body(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _error(description: str) -> dict[str, Any]:
    return _body(description, "Error")


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "nextclick profile service", "version": "1",
             "description": "Profiles as of the last epoch commit of the targeting flow (docs/profile-service.md)."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "Profile": {"$ref": "https://nextclick.dev/schemas/profile/v1.json",
                        "description": "schemas/profile.v1.json"},
            "NextBestAction": {
                "type": "object",
                "required": ["profile_key", "as_of", "judged_at", "channel", "trigger", "action", "candidates",
                             "approximated"],
                "properties": {
                    "profile_key": {"type": "string"},
                    "as_of": {"type": "integer", "description": "The view record's epoch commit, epoch ms."},
                    "judged_at": {"type": "integer", "description": "The trigger's time: now, epoch ms."},
                    "channel": {"type": "string"},
                    "trigger": {"type": "object", "description": "type, attributes, customer_channel"},
                    "action": {"description": "The rule that would fire, or null.", "oneOf": [
                        {"type": "null"},
                        {"type": "object", "required": ["rule", "action", "channel", "offer", "params", "purpose",
                                                        "promotion", "expires_at"]}]},
                    "candidates": {"type": "array", "description": "Every rule on the trigger, by priority.",
                                   "items": {"type": "object", "required": ["rule", "priority", "action", "channel",
                                                                            "offer", "outcome", "reason",
                                                                            "conditions"],
                                             "properties": {"outcome": {"enum": ["fires", "blocked", "not_matched",
                                                                                 "not_tried"]},
                                                            "reason": {"type": ["string", "null"]}}}},
                    "approximated": {"type": "array", "items": {"type": "string"},
                                     "description": "Attributes the candidates name that the view does not "
                                                    "carry (read as missing), and consent_tie when a candidate "
                                                    "was judged on consent entries at the same millisecond "
                                                    "(judged opted out)."},
                },
            },
        },
    },
    "paths": {
        "/v1/profiles/{id_type}/{id}": {"get": {
            "summary": "The profile holding an identifier",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "id_type", "in": "path", "required": True,
                 "schema": {"enum": sorted(ID_TYPES)}},
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "The raw identifier; hashed with the deployment's secret, never stored or logged."},
            ],
            "responses": {"200": _body("The profile", "Profile"),
                          "400": _error("Unknown id_type"), "401": _error("No valid bearer token"),
                          "404": _error("No profile holds this identifier"), "429": _error("Rate limited"),
                          "500": _error("The service failed to answer")}}},
        "/v1/profiles/{id_type}/{id}/next-best-action": {"get": {
            "summary": "What to offer in an interaction on a channel now, and why; no side effects",
            "description": "The flow's rules judged for a synthetic event of the channel's interaction type "
                           f"({', '.join(f'{c}: {t}' for c, t in sorted(INTERACTIONS.items()))}) at the "
                           "service's time, on the profile as of the last epoch commit: the rule that would "
                           "fire, if any, and every candidate with why it is blocked or not matched. No decision "
                           "is emitted, no cooldown or cap is used, nothing is written. Transient signals the "
                           "view does not carry read as missing (`known: false`, listed in `approximated`); "
                           "docs/profile-service.md says what else is approximated. Any other query parameter is "
                           "an attribute of the trigger event (e.g. outcome=unresolved), typed and checked by the "
                           "event type's schema.",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "id_type", "in": "path", "required": True, "schema": {"enum": sorted(ID_TYPES)}},
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "The raw identifier; hashed with the deployment's secret, never stored or logged."},
                {"name": "channel", "in": "query", "required": True,
                 "schema": {"enum": sorted(CHANNELS)}, "description": "Where the interaction happens."},
                {"name": "event", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "The trigger's event type, if not the channel's interaction type (it must be "
                                "on that channel, e.g. store_purchase on store)."},
            ],
            "responses": {"200": _body("The judgement", "NextBestAction"),
                          "400": _error("Unknown id_type or channel, a channel no rule judges, a trigger "
                                        "attribute the event type does not declare or accept, or a query "
                                        "string that is not UTF-8"),
                          "401": _error("No valid bearer token"),
                          "404": _error("No profile holds this identifier"), "429": _error("Rate limited"),
                          "500": _error("The service failed to answer")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Alive"}}}},
        "/readyz": {"get": {"summary": "Caught up with the profile view topic",
                            "responses": {"200": {"description": "Ready"}, "503": {"description": "Catching up"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text format"}}}},
    },
}


class HttpErrorLog(logging.Filter):
    """aiohttp logs a request it could not handle with the exception, and a refused request's message
    quotes the bytes it refused: the path (which holds the raw identifier) or a header (the token).
    Such a record keeps its place, without the message: a request the HTTP parser refused (status
    4xx) becomes one warning; anything else keeps its error level and the traceback's frames, which
    name code, not values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        status = getattr(exc, "code", None)
        record.msg, record.args = "request not handled", ()
        record.error = type(exc).__name__
        if isinstance(status, int) and 400 <= status < 500:
            record.msg, record.status = "request refused by the HTTP parser", status
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        else:
            record.frames = "".join(traceback.format_tb(record.exc_info[2]))
        record.exc_info, record.exc_text = None, None
        return True


def serve(config: Config) -> int:
    """Run the service until SIGTERM/SIGINT (aiohttp's run_app handles both)."""
    # A parent that blocked them (a supervisor, `nextclick run`'s drain thread in the same session) must
    # not leave the service unstoppable: the mask is inherited across exec.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    topic = config.topics.profiles
    if not topic:
        raise ConfigError("[topics].profiles is required: the service reads the profile view topic")
    tokens = TokenFile(config.serve.token_file)  # read again when it changes (a rotated Secret)
    secret = config.privacy.resolve_secret()
    host, sep, port = config.serve.address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"[serve].address must be host:port, got {config.serve.address!r}")
    ruleset = load_configured_rules(config)  # a bad rules file or tracking plan fails at start
    configure_orders(config.profile.recent_orders, config.profile.recent_orders_max_age_ms)  # as the flow's
    metrics = Metrics()
    index = ViewIndex(config.serve.store_dir)
    reader = ViewReader(dict(config.kafka), topic, index, metrics)
    app = build_app(config, index, reader, metrics, tokens, secret, ruleset)

    async def start_reader(_app: web.Application) -> None:
        reader.start()

    async def stop_reader(_app: web.Application) -> None:
        reader.close()
        index.close()

    logging.getLogger("aiohttp.server").addFilter(HttpErrorLog())
    app.on_startup.append(start_reader)
    app.on_cleanup.append(stop_reader)
    log.info("profile service starting", extra={"address": config.serve.address, "topic": topic,
                                                 "store": config.serve.store_dir, "tokens": len(tokens.tokens)})
    try:
        asyncio.run(_run(app, host or "0.0.0.0", int(port), config.serve.idle_timeout_s))
    except (web.GracefulExit, KeyboardInterrupt):  # SIGTERM / SIGINT: the runner has cleaned up
        pass
    return 0


# A connection is closed when it has not sent a whole request's headers this long after it opened or
# after its last answer: idle keep-alive connections, and slowloris ones trickling header bytes (aiohttp's
# keep-alive timer runs from the connection's start and closes it while no request has been read).
KEEPALIVE_TIMEOUT_S = 15.0
# Connections held at once, at most (and at most 3/4 of the open-file limit, which RocksDB and Kafka
# share): past it, the oldest connection waiting for a request is closed (the new one, if none is).
MAX_CONNECTIONS = 10_000
# asyncio logs an accept() that failed for want of file descriptors with a traceback, many times a
# millisecond: one line at most this often instead.
ACCEPT_ERROR_LOG_EVERY_S = 10.0


def connection_cap(open_files_limit: int, most: int = MAX_CONNECTIONS) -> int:
    """The connections to hold at once with this soft RLIMIT_NOFILE (RLIM_INFINITY: -1)."""
    if open_files_limit < 0:
        return most
    return max(16, min(most, open_files_limit * 3 // 4))


async def start_server(app: web.Application, host: str, port: int, *, handle_signals: bool = False,
                       keepalive_s: float = KEEPALIVE_TIMEOUT_S, max_connections: int | None = None) -> web.AppRunner:
    """The app listening on host:port, with a server whose handlers answer a request the HTTP parser
    refused without quoting it (QuietRequestHandler), close idle and slow connections after
    `keepalive_s`, and hold at most `max_connections` (default: connection_cap of the process's limit)."""
    runner = web.AppRunner(app, handle_signals=handle_signals, access_log=None, keepalive_timeout=keepalive_s)
    await runner.setup()
    server = runner.server
    assert server is not None
    server.__class__ = QuietServer
    cast(QuietServer, server).max_connections = (
        max_connections if max_connections is not None
        else connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _run(app: web.Application, host: str, port: int, keepalive_s: float = KEEPALIVE_TIMEOUT_S) -> None:
    """What `web.run_app` does (SIGTERM and SIGINT end it, the app's cleanup runs), with start_server's
    server, and the accept errors of a process out of file descriptors logged once in a while.
    `keepalive_s`: `[serve] idle_timeout`."""
    asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
    runner = await start_server(app, host, port, handle_signals=True, keepalive_s=keepalive_s)
    try:
        # The address bound (the port chosen, for `:0`): one log line, not aiohttp's banner.
        bound = [f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}" for h, p, *_ in runner.addresses]
        log.info("profile service listening", extra={"addresses": bound})
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class QuietRequestHandler(RequestHandler):
    """aiohttp answers a request its parser refused (a line or header over 8,190 bytes, a method or version
    that is not HTTP) with a 400 whose body quotes the bytes it refused: the path holds the raw
    identifier, a header the token. This answer names the status only; HttpErrorLog keeps the log
    clean the same way."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status != HTTPStatus.INTERNAL_SERVER_ERROR:  # a 500's body is aiohttp's fixed text already
            message = PARSER_REFUSAL.format(status=status, phrase=HTTPStatus(status).phrase)
        return super().handle_error(request, status, exc, message)


PARSER_REFUSAL = ("{status} {phrase}: not a request this service reads (a request line or header over 8,190 "
                  "bytes, or bytes that are not HTTP/1.1)")


class QuietServer(web.Server):
    """A web.Server whose connections are QuietRequestHandlers, at most `max_connections` of them."""

    max_connections = MAX_CONNECTIONS

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = QuietRequestHandler
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) <= self.max_connections:
            return
        # The oldest connection waiting for a request (idle, or still reading headers) makes room; a
        # request being answered is never cut. None waiting: the new one is closed.
        victim = next((h for h in self._connections if _waiting(h)), handler)
        victim.force_close()


def _waiting(handler: RequestHandler) -> bool:
    """Whether the connection waits for a request (aiohttp's own test before its keep-alive close)."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done() and not handler._force_close


class AcceptErrorLog:
    """The event loop's exception handler: asyncio's `socket.accept() out of system resource` (no file
    descriptor left, EMFILE) becomes one error line every `every_s` at most, with the count since the
    last, instead of a traceback each time; everything else goes to asyncio's default handler."""

    def __init__(self, every_s: float = ACCEPT_ERROR_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._every, self._clock = every_s, clock
        self._logged_at: float | None = None
        self._count = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _retry_after_close(context):
            # asyncio retries the accept a second after each failure; a retry due after the service closed
            # its listening socket (SIGTERM) fails on it: nothing is wrong, and no traceback is needed.
            log.debug("accept retried after the listening socket closed")
            return
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        self._count += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._every:
            return
        exc = context.get("exception")
        log.error("cannot accept connections: out of file descriptors or memory",
                  extra={"error": type(exc).__name__ if exc is not None else None,
                         "errno": getattr(exc, "errno", None), "failures": self._count})
        self._logged_at, self._count = now, 0



def _retry_after_close(context: dict[str, Any]) -> bool:
    """Whether the loop's error is asyncio's accept retry (`_start_serving`, scheduled by the accept error)
    run on a listening socket closed since: ValueError (file descriptor -1) or OSError."""
    callback = getattr(context.get("handle"), "_callback", None)
    return getattr(callback, "__name__", "") == "_start_serving" and \
        isinstance(context.get("exception"), (ValueError, OSError))
