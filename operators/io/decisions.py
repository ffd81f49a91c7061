"""Decisions as CloudEvents 1.0 in Kafka binary mode: the contract email and ad systems consume.

`decision_message` is what every decision sink receives (operators/io/sinks.py): the decision's
topic, key, JSON body and CloudEvents attributes, encoded once whatever the sink.

Everything in the message derives from the decision itself (no wall clock, no random ids), so a
replay after a crash produces byte-identical messages that consumers dedupe on (ce_source, ce_id).
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from nextclick.operators.infra.config import decision_topic
from nextclick.operators.io.sinks import OutMessage
from nextclick.operators.records import Decision

SPEC_VERSION = "1.0"
DECISION_TYPE = "io.nextclick.decision.v1"
DECISION_SOURCE = "/nextclick/targeting"
BODY_SCHEMA = "https://nextclick.dev/schemas/decision/v1.json"


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def expired(decision: Decision, now_ms: int) -> bool:
    """Whether a decision is already past its `ce_expirytime` on the wall clock: then it is not sent.

    Expiry is event time (the trigger's time plus the rule's `expiry`), so the message stays the same
    on every replay; a decision made in a backfill for a trigger long past is dropped here and counted
    (`nextclick_decisions_expired_total`) instead of reaching consumers already stale. Its cooldown and
    caps still count, as they would have when the trigger happened (docs/rules.md, "Expiry and backfills").
    """
    return decision.expires_at <= now_ms


def decision_body(decision: Decision) -> dict[str, object]:
    """The JSON body; its schema is `schemas/decision.v1.json`."""
    body = _core_body(decision)
    if decision.params is not None:  # the rule's decision parameters (additive, optional field)
        body["params"] = decision.params
    if decision.reachable is not None:  # how to reach the customer (additive, optional fields)
        body["reachable"] = list(decision.reachable)
        address = decision.address
        body["address"] = None if address is None else {"id_type": address[0], "key": address[1]}
    return body


def _core_body(decision: Decision) -> dict[str, object]:
    return {
        "decision_id": decision.decision_id,
        "customer": decision.customer,
        "action": decision.action,
        "channel": decision.channel,
        "offer": decision.offer,
        "priority": decision.priority,
        "trigger": {"name": decision.trigger, "id": decision.trigger_id, "ts": decision.decided_at},
        "reasons": {"rule_id": decision.rule_id, "signals": decision.signals},
        "profile_version": decision.profile_version,
        "decided_at": rfc3339(decision.decided_at),
        "expires_at": rfc3339(decision.expires_at),
        "purpose": decision.purpose,
        "promotion": decision.promotion,
    }


def encode_decision(decision: Decision, source: str = DECISION_SOURCE) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(Kafka key, value, headers): key is the pseudonymous customer key (CloudEvents partitionkey)."""
    headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", decision.decision_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", DECISION_TYPE.encode()),
        ("ce_time", rfc3339(decision.decided_at).encode()),
        ("ce_subject", decision.customer.encode()),
        ("ce_dataschema", BODY_SCHEMA.encode()),
        ("ce_partitionkey", decision.customer.encode()),
        ("ce_expirytime", rfc3339(decision.expires_at).encode()),
        ("content-type", b"application/json"),
    ]
    return decision.customer.encode(), orjson.dumps(decision_body(decision)), headers


def decision_message(decision: Decision, topics: str) -> OutMessage:
    """The record every decision sink receives; `topics` is the `topics.decisions` setting."""
    key, value, headers = encode_decision(decision)
    return OutMessage(decision_topic(topics, decision.channel), key, value, headers)
