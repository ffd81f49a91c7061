"""Topic admin in one place: `nextclick topics create` (every topic the flow reads or writes, from the
`[topics]` settings) and `ensure_topics` (given topics, given partition counts: demos, tests, benches).

Idempotent: an existing topic is reported and left exactly as it is (partitions are never added: a
keyed topic that gains partitions sends a customer's later events elsewhere, out of order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from nextclick.operators.errors import NextclickError
from nextclick.operators.infra.config import Config, progress_topic
from nextclick.operators.io.kafka_admin import client_config
from nextclick.operators.io.preflight import output_topics


def ensure_topics(kafka: Mapping[str, str], topics: Mapping[str, int], timeout_s: float = 30.0) -> None:
    """Create missing topics with the given partition counts; existing ones are left as they are."""
    admin = AdminClient(client_config(kafka))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
    if not missing:
        return
    for future in admin.create_topics(missing, operation_timeout=timeout_s).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def topic_retention_ms(kafka: Mapping[str, str], topics: Iterable[str],
                       timeout_s: float = 30.0) -> dict[str, int | None]:
    """retention.ms of each topic as the broker reports it (DescribeConfigs); None when it does not
    (Tansu reports only the configs a topic was created with, and a broker may refuse the request)."""
    admin = AdminClient(client_config(kafka))
    names = list(dict.fromkeys(topics))
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in names],
                                     request_timeout=timeout_s)
    found: dict[str, int | None] = {}
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a broker without DescribeConfigs: unknown, not fatal
            found[resource.name] = None
            continue
        entry = entries.get("retention.ms")
        value = getattr(entry, "value", None) if entry is not None else None
        found[resource.name] = int(value) if value not in (None, "") else None
    return found


@dataclass(frozen=True)
class TopicSpec:
    name: str
    role: str  # input, control, progress, decisions, dead_letter, profiles
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def plan_topics(config: Config) -> list[TopicSpec]:
    """What the configuration asks for, topic by topic (no I/O)."""
    t = config.topics

    def settings(retention_ms: int) -> dict[str, str]:
        out = {}
        if retention_ms:
            out["retention.ms"] = str(retention_ms)
        if t.cleanup_policy:
            out["cleanup.policy"] = t.cleanup_policy
        return out

    specs = [TopicSpec(name, "input", t.partitions, t.replication_factor, settings(t.retention_ms))
             for name in t.inputs]
    specs.append(TopicSpec(t.control, "control", t.control_partitions, t.replication_factor,
                           settings(t.retention_ms)))
    # The processes' event-time progress (operators/io/alignment.py): one small record per input
    # partition, only the latest of which matters.
    specs.append(TopicSpec(progress_topic(t), "progress", 1, t.replication_factor, {"cleanup.policy": "compact"}))
    for name, setting in output_topics(config):
        if setting == "topics.profiles":
            # The profile view (operators/io/profile_view.py): compacted, so the latest record per profile
            # key stays for good and a tombstone removes the key (after delete.retention.ms).
            specs.append(TopicSpec(name, "profiles", t.profiles_partitions, t.replication_factor,
                                   {"cleanup.policy": "compact"}))
        elif setting == "topics.decisions":
            specs.append(TopicSpec(name, "decisions", t.partitions, t.replication_factor, settings(t.retention_ms)))
        else:
            specs.append(TopicSpec(name, "dead_letter", t.partitions, t.replication_factor,
                                   settings(t.dead_letter_retention_ms or t.retention_ms)))
    return specs


def create_topics(kafka: Mapping[str, Any], specs: list[TopicSpec], *, dry_run: bool = False,
                  timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Create the missing topics; one report per topic. Raises with the first failure's reason."""
    admin = AdminClient(client_config(kafka))
    existing = admin.list_topics(timeout=timeout_s).topics
    report: list[dict[str, Any]] = []
    to_create: list[TopicSpec] = []
    for spec in specs:
        entry: dict[str, Any] = {"topic": spec.name, "role": spec.role}
        meta = existing.get(spec.name)
        if meta is not None and meta.error is None:
            have = len(meta.partitions)
            entry.update(status="exists", partitions=have)
            if 0 < have < spec.partitions:
                entry["status"] = "exists_with_fewer_partitions"
                entry["note"] = (f"has {have} partitions, the configuration asks for {spec.partitions}; left "
                                 "unchanged (adding partitions moves keys to other partitions)")
        else:
            entry.update(status="would_create" if dry_run else "created", partitions=spec.partitions,
                         replication_factor=spec.replication_factor, config=spec.config)
            to_create.append(spec)
        report.append(entry)
    if dry_run or not to_create:
        return report
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in to_create],
        operation_timeout=timeout_s, request_timeout=timeout_s)
    failures = []
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            err = exc.args[0]
            entry = next(e for e in report if e["topic"] == name)
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # created meanwhile by someone else
                entry["status"] = "exists"
                continue
            entry["status"] = "failed"
            entry["error"] = err.str()
            failures.append(f"could not create topic {name!r}: {err.str()}")
    if failures:
        raise TopicsError(failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""), report)
    return report


class TopicsError(NextclickError, RuntimeError):
    def __init__(self, message: str, report: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.report = report
