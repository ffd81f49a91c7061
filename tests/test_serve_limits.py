"""`nextclick serve` under hostile or changing conditions, without a broker: idle and slow connections
closed, a cap on connections, accept errors logged once in a while, a rotated token file, and every
answer JSON (a value out of range, bytes that are not UTF-8, a bug)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nextclick.flows.serve import (
    AcceptErrorLog,
    Metrics,
    TokenFile,
    build_app,
    connection_cap,
    query_is_utf8,
    start_server,
)
from nextclick.operators.engine.view import profile_view
from nextclick.operators.identity.pseudonyms import pseudonymize
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.infra.config import Config
from nextclick.operators.io.view_index import ViewIndex
from tests.helpers import DAY, MIN, T0, Customer, default_rules

REPO = Path(__file__).resolve().parents[1]
SECRET = b"serve-limits-secret"
TOKEN, NEW_TOKEN = "tok-old-41c7", "tok-new-93ad"
NOW = T0 + 40 * DAY


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- idle and slow connections, and the cap -------------------------------------------------------------


def small_app(gate: asyncio.Event | None = None, entered: list[int] | None = None) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slow(request: web.Request) -> web.Response:
        assert gate is not None and entered is not None
        entered.append(1)
        await gate.wait()
        return web.json_response({"status": "late"})

    app = web.Application()
    app.router.add_get("/healthz", ok)
    app.router.add_get("/slow", slow)
    return app


async def closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    """Whether the server closes the connection within `within_s` (whatever it sent first)."""
    try:
        async with asyncio.timeout(within_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_idle_slow_and_finished_connections_are_closed_after_the_keepalive_timeout() -> None:
    async def scenario() -> None:
        runner = await start_server(small_app(), "127.0.0.1", 0, keepalive_s=0.4, max_connections=100)
        port = runner.addresses[0][1]
        try:
            started = time.monotonic()
            idle_r, _idle_w = await asyncio.open_connection("127.0.0.1", port)
            slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
            slow_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished

            async def trickle() -> None:  # slowloris: a header line every 0.1 s
                try:
                    while True:
                        await asyncio.sleep(0.1)
                        slow_w.write(b"X-Pad: p\r\n")
                        await slow_w.drain()
                except (ConnectionError, RuntimeError):
                    pass

            trickling = asyncio.create_task(trickle())
            done_r, done_w = await asyncio.open_connection("127.0.0.1", port)
            done_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then kept alive
            assert (await done_r.readline()).startswith(b"HTTP/1.1 200")
            assert await closed_by_server(idle_r, 3)
            assert await closed_by_server(slow_r, 3)
            assert await closed_by_server(done_r, 3)
            assert time.monotonic() - started < 3
            trickling.cancel()
        finally:
            await runner.cleanup()

    run(scenario)


def test_past_the_cap_the_oldest_waiting_connection_makes_room_and_a_busy_one_is_never_cut() -> None:
    async def scenario() -> None:
        gate, entered = asyncio.Event(), []
        runner = await start_server(small_app(gate, entered), "127.0.0.1", 0, keepalive_s=30, max_connections=3)
        port = runner.addresses[0][1]
        server = runner.server
        assert server is not None
        try:
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await until(lambda: len(server.connections) == 3 and all(h._waiter for h in server.connections),
                        "three connections waiting for a request")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 3)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:40]
            assert await closed_by_server(idle[0][0], 1)  # the oldest idle one went
            assert not await closed_by_server(idle[1][0], 0.3) and not await closed_by_server(idle[2][0], 0.1)
            for _, w in idle:
                w.close()

            # Three requests being answered: a fourth connection is closed, and they are answered.
            await until(lambda: not server.connections, "the idle connections gone")
            busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            for _, w in busy:
                w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await until(lambda: len(entered) == 3 and len(server.connections) == 3, "three requests being answered")
            extra_r, _extra_w = await asyncio.open_connection("127.0.0.1", port)
            assert await closed_by_server(extra_r, 1)
            gate.set()
            for r, _ in busy:
                assert (await asyncio.wait_for(r.read(), 3)).startswith(b"HTTP/1.1 200")
        finally:
            await runner.cleanup()

    run(scenario)


def test_the_cap_leaves_a_quarter_of_the_open_file_limit_to_the_store_and_kafka() -> None:
    assert connection_cap(20_000) == 10_000 and connection_cap(1_048_576) == 10_000
    assert connection_cap(1024) == 768 and connection_cap(10) == 16
    assert connection_cap(-1) == 10_000  # RLIM_INFINITY


def test_accept_errors_are_one_line_in_a_while_and_other_loop_errors_go_to_asyncio() -> None:
    clock = FakeClock()
    handler = AcceptErrorLog(every_s=10, clock=clock)
    passed: list[dict[str, Any]] = []

    class Loop:
        def default_exception_handler(self, context: dict[str, Any]) -> None:
            passed.append(context)

        def _start_serving(self) -> None:
            """asyncio's accept retry, scheduled a second after each accept error."""

    class Handle:
        _callback = Loop()._start_serving

    loop: Any = Loop()
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    collect = Collect()
    logging.getLogger("nextclick.serve").addHandler(collect)
    try:
        flood = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
        for _ in range(500):
            handler(loop, flood)
        clock.now += 10
        for _ in range(3):
            handler(loop, flood)
        handler(loop, {"message": "Task exception was never retrieved"})
        # A retry due after the listening socket closed (SIGTERM): nothing to say.
        handler(loop, {"message": "Exception in callback BaseSelectorEventLoop._start_serving(...)",
                       "exception": ValueError("Invalid file descriptor: -1"), "handle": Handle()})
    finally:
        logging.getLogger("nextclick.serve").removeHandler(collect)
    assert [(r.getMessage(), r.__dict__["errno"], r.__dict__["failures"]) for r in records] == [
        ("cannot accept connections: out of file descriptors or memory", 24, 1),
        ("cannot accept connections: out of file descriptors or memory", 24, 500)]
    assert all(r.exc_info is None for r in records)
    assert passed == [{"message": "Task exception was never retrieved"}]


SERVER_OUT_OF_FILES = """
import asyncio, logging, os, resource, sys
from aiohttp import web
from nextclick.flows import serve

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

class Port(logging.Handler):  # the port bound (`:0`), from the service's own line
    def emit(self, record):
        if record.getMessage() == "profile service listening":
            print(record.addresses[0].rsplit(":", 1)[1], flush=True)

logging.getLogger("nextclick.serve").addHandler(Port())
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(128, hard), hard))

async def healthz(request):
    return web.json_response({"status": "ok"})

async def exhaust(app):
    async def later():
        await asyncio.sleep(0.5)
        held = []
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        print("full", flush=True)
        await asyncio.sleep(2.5)
        for fd in held:
            os.close(fd)
        print("released", flush=True)
    app["exhaust"] = asyncio.create_task(later())

app = web.Application()
app.router.add_get("/healthz", healthz)
app.on_startup.append(exhaust)
try:
    asyncio.run(serve._run(app, "127.0.0.1", 0))
except web.GracefulExit:
    pass
"""


def test_a_process_out_of_file_descriptors_logs_one_line_not_a_traceback_each_time(tmp_path: Path) -> None:
    """The service's own run loop (serve._run) with every descriptor taken: connections waiting to be
    accepted make asyncio's accept fail (EMFILE) over and over; the log keeps one line, and once
    descriptors are free again the connections are answered."""
    import socket

    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVER_OUT_OF_FILES)], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        assert child.stdout.readline() == b"full\n"
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        for c in clients:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert child.stdout.readline() == b"released\n"
        for c in clients:
            assert c.recv(64).startswith(b"HTTP/1.1 200")
            c.close()
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(10)
    text = err.read_text()
    assert text.count("cannot accept connections: out of file descriptors or memory") == 1, text[:2000]
    assert "Traceback" not in text and "socket.accept() out of system resource" not in text, text[:2000]


# --- the token file, rotated ---------------------------------------------------------------------------


def collect_log(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "nextclick.serve"]


def test_a_rewritten_token_file_is_read_again_within_a_second(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "nextclick.serve")
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")
    clock = FakeClock()
    tokens = TokenFile(str(path), clock=clock)
    assert tokens.current() == {TOKEN}
    path.write_text(f"# rotated\n{NEW_TOKEN}\n")
    assert tokens.current() == {TOKEN}  # looked at once a second at most
    clock.now += 1
    assert tokens.current() == {NEW_TOKEN}
    assert collect_log(caplog) == [("INFO", "token file reloaded")]

    # Emptied, then gone: the tokens read before stay, one error line each time it changes.
    for change in (lambda: path.write_text("# nothing yet\n"), path.unlink):
        caplog.clear()
        change()
        for _ in range(3):
            clock.now += 1
            assert tokens.current() == {NEW_TOKEN}
        assert collect_log(caplog) == [("ERROR", "token file not reloaded: the previous tokens stay accepted")]
        assert NEW_TOKEN not in caplog.text and TOKEN not in caplog.text
    path.write_text(f"{TOKEN}\n{NEW_TOKEN}\n")
    clock.now += 1
    assert tokens.current() == {TOKEN, NEW_TOKEN}


def test_a_kubernetes_secret_update_swapping_the_data_symlink_is_seen(tmp_path: Path) -> None:
    """A Secret volume: `tokens -> ..data/tokens`, `..data -> ..2026_v1`; an update writes `..2026_v2` and
    renames a new `..data` symlink over the old one. The path's stat, symlinks followed, changes."""
    (tmp_path / "..2026_v1").mkdir()
    (tmp_path / "..2026_v1" / "tokens").write_text(f"{TOKEN}\n")
    (tmp_path / "..data").symlink_to("..2026_v1")
    (tmp_path / "tokens").symlink_to("..data/tokens")
    clock = FakeClock()
    tokens = TokenFile(str(tmp_path / "tokens"), clock=clock)
    (tmp_path / "..2026_v2").mkdir()
    (tmp_path / "..2026_v2" / "tokens").write_text(f"{NEW_TOKEN}\n")
    (tmp_path / "..data_tmp").symlink_to("..2026_v2")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    clock.now += 1
    assert tokens.current() == {NEW_TOKEN}


# --- the app: JSON answers, tokens rotated ---------------------------------------------------------------


WHO = "C-limits-1"


def index_with_a_customer(tmp_path: Path) -> ViewIndex:
    key = pseudonymize("customer", WHO, SECRET)
    c = Customer(customer=key)
    c.send("page_view", NOW - DAY)
    record = profile_view(f"profiles/{key}", c.profile, c.ruleset, NOW - MIN)
    index = ViewIndex(tmp_path / "index")
    index.apply([(0, 0, f"profiles/{key}".encode(), orjson.dumps(record))])
    return index


async def with_client(app: web.Application, body: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async with TestClient(TestServer(app)) as client:
        await body(client)


def app_for(tmp_path: Path, tokens: frozenset[str] | TokenFile, metrics: Metrics,
            index: Any = None) -> web.Application:
    config = Config().replace(serve={"rate_limit": 0.0})
    return build_app(config, index if index is not None else index_with_a_customer(tmp_path), None, metrics,
                     tokens, SECRET, default_rules(), ManualClock(NOW))


def test_the_service_accepts_the_rotated_tokens_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")
    clock = FakeClock()
    app = app_for(tmp_path, TokenFile(str(path), clock=clock), Metrics())

    async def body(client: TestClient[Any, Any]) -> None:
        async def status(token: str) -> int:
            response = await client.get(f"/v1/profiles/customer/{WHO}", headers={"Authorization": f"Bearer {token}"})
            return response.status

        assert (await status(TOKEN), await status(NEW_TOKEN)) == (200, 401)
        path.write_text(f"{NEW_TOKEN}\n")
        clock.now += 1
        assert (await status(TOKEN), await status(NEW_TOKEN)) == (401, 200)

    run(lambda: with_client(app, body))


def test_next_best_action_answers_json_400_for_an_integer_out_of_range_and_a_query_not_utf8(tmp_path: Path) -> None:
    metrics = Metrics()
    app = app_for(tmp_path, frozenset({TOKEN}), metrics)
    path = f"/v1/profiles/customer/{WHO}/next-best-action?channel=store&event=store_purchase&amount=5"

    async def body(client: TestClient[Any, Any]) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for query in ("&items=1e308", "&items=99999999999999999999", "&items=1000001", "&order_id=%ff",
                      "&order_id=ab%C3", "&%ff=1"):
            response = await client.get(path + query, headers=headers)
            assert response.status == 400, query
            assert response.content_type == "application/json"
            assert (await response.json())["error"] == "bad_request", query
        response = await client.get(path + "&order_id=%C3%A9", headers=headers)  # é, as UTF-8: judged
        assert response.status == 200 and (await response.json())["trigger"]["attributes"]["order_id"] == "\u00e9"

    run(lambda: with_client(app, body))
    assert metrics.requests.labels("/v1/profiles/{id_type}/{id}/next-best-action", "400")._value.get() == 6


def test_query_is_utf8() -> None:
    assert query_is_utf8("outcome=unresolved&topic=caf%C3%A9+au+lait")
    assert not query_is_utf8("outcome=%ff") and not query_is_utf8("a=%C3&b=%A9")


def test_a_failing_handler_answers_a_json_500_counted_and_logged_without_its_message(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class BrokenIndex:
        def lookup(self, id_type: str, key: str) -> bytes | None:
            raise RuntimeError(f"cannot read {WHO}")

    metrics = Metrics()
    app = app_for(tmp_path, frozenset({TOKEN}), metrics, BrokenIndex())

    async def body(client: TestClient[Any, Any]) -> None:
        response = await client.get(f"/v1/profiles/customer/{WHO}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 500 and response.content_type == "application/json"
        assert await response.json() == {"error": "internal_error", "message": "the service failed to answer"}

    run(lambda: with_client(app, body))
    assert metrics.requests.labels("/v1/profiles/{id_type}/{id}", "500")._value.get() == 1
    (failed,) = [r for r in caplog.records if r.name == "nextclick.serve" and r.levelname == "ERROR"]
    assert failed.getMessage() == "request failed" and failed.__dict__["error"] == "RuntimeError"
    # The service's own records (the test client's access log, which `serve` turns off, quotes the path).
    own = [r for r in caplog.records if r.name != "aiohttp.access"]
    assert not any(WHO in r.getMessage() or WHO in str(r.__dict__) for r in own) and failed.exc_info is None
