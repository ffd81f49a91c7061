"""One embedded Tansu broker per test session, on a free 127.0.0.1 port."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from flows.local_broker import LocalBroker


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
