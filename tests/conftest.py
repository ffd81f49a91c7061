"""One embedded Tansu broker per test session, on a free 127.0.0.1 port."""

from __future__ import annotations

import logging
import signal
import uuid
from typing import Iterator

import pytest

from nextclick.flows.local_broker import LocalBroker
from nextclick.operators.infra.logs import JsonFormatter


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches the embedded broker (through any fixture) is marked `broker`, so the fast
    loop (`pytest -m "not broker and not slow"`, README's Development) needs no marking by hand."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("broker"):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


@pytest.fixture()
def kafka(broker: LocalBroker) -> dict[str, str]:
    return {"bootstrap.servers": broker.bootstrap}


@pytest.fixture()
def topic_prefix() -> str:
    """Tests share the broker: each gets its own topic names."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _no_leaked_log_handlers() -> Iterator[None]:
    """A command run in-process (`nextclick.flows.cli.main`) points the root logger at the stderr of its test; the
    next test's command would log into that closed stream. Each test starts without those handlers."""
    yield
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)]


@pytest.fixture(autouse=True)
def _no_leaked_signal_mask() -> Iterator[None]:
    """A drain test blocks SIGTERM and SIGINT in the test process (operators/io/drain.py); processes
    that later tests start would inherit that mask and ignore `terminate()`."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, before)
