"""Kafka client settings and the broker wait every Kafka-touching module shares.

Its own module, importing nothing of the project's, so that the source, the sinks, the alignment
exchange, the drain watcher and the topic admin can all use it without importing each other.
Client settings pass through unchanged, so SASL/TLS (`security.protocol`, `sasl.*`, `ssl.*`) work
against any Kafka-protocol broker.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

# Settings whose values must never reach a log line or an error message.
SECRET_SETTINGS = ("sasl.password", "sasl.oauthbearer.client.secret", "ssl.key.password",
                   "ssl.keystore.password", "ssl.key.pem", "sasl.oauthbearer.config")


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of client settings that is safe to log."""
    return {k: ("***" if k in SECRET_SETTINGS or "password" in k or "secret" in k else v)
            for k, v in config.items()}


def client_config(kafka: Mapping[str, str], **overrides: Any) -> dict[str, Any]:
    """Pass-through settings plus ours; ours never override a setting the user gave explicitly."""
    config: dict[str, Any] = dict(overrides)
    config.update(kafka)
    config.setdefault("logger", logging.getLogger("librdkafka"))
    return config


_REFUSED_CLIENT = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
                             KafkaError.UNSUPPORTED_SASL_MECHANISM, KafkaError.ILLEGAL_SASL_STATE})


def wait_for_broker(kafka: Mapping[str, str], timeout_s: float = 60.0, *, attempt_s: float = 2.0) -> None:
    """Block until the cluster answers a metadata request, retrying with backoff; clear error if not."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    last = "no answer"
    refused: list[str] = []

    def on_error(err: KafkaError) -> None:
        # The root cause of a "transport failure" when the broker refuses the client's security settings:
        # permanent, so retrying it for two minutes only hides it (an outside probe: a SASL mistake read as
        # "Kafka did not answer").
        if err.code() in _REFUSED_CLIENT:
            refused.append(err.str())

    admin = AdminClient(client_config(kafka, error_cb=on_error))
    while True:
        try:
            admin.list_topics(timeout=attempt_s)
            return
        except KafkaException as exc:
            last = str(exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc)
        admin.poll(0)  # serves the error callback
        if refused:
            raise ConnectionError(f"Kafka at {kafka.get('bootstrap.servers', '?')} refused the connection's security "
                                  f"settings ({refused[-1]}): check security.protocol, sasl.* and ssl.* in [kafka]")
        if time.monotonic() + delay > deadline:
            raise ConnectionError(f"Kafka at {kafka.get('bootstrap.servers', '?')} did not answer within "
                                  f"{timeout_s:.0f}s ({last})")
        log.warning("broker not reachable, retrying", extra={"retry_in_s": round(delay, 2), "error": last})
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
