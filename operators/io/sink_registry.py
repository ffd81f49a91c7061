"""Which decision sink `flow.decision_sink` names: the registry of sinks, and the one-line refusal.

A separate module from the protocol (operators/io/sinks.py) so that the sinks import the protocol
and this module imports the sinks, with no cycle between them.
"""

from __future__ import annotations

from bytewax.outputs import Sink

from nextclick.operators.infra.config import Config, ConfigError
from nextclick.operators.io import file_sink, kafka_sink
from nextclick.operators.io.sinks import DecisionItem, DecisionSink, OnFatal, exit_process

# The setting, as `[flow] decision_sink = "<name>[:<target>]"`; the default keeps decisions on Kafka.
SETTING = "flow.decision_sink"
DEFAULT = "kafka"

DECISION_SINKS: dict[str, DecisionSink] = {
    "kafka": kafka_sink.decision_sink,
    "file": file_sink.decision_sink,
}


def configured(config: Config) -> str:
    """The configured sink; a configuration without the setting keeps the default."""
    return config.flow.decision_sink or DEFAULT


def decision_sink(config: Config, spec: str | None = None, on_fatal: OnFatal = exit_process) -> Sink[DecisionItem]:
    """The sink `spec` (default: the configured one) names, built; a wrong value is one ConfigError line.

    Cheap and side-effect free, so the start-up checks call it too (flows/runner.preflight).
    """
    spec = configured(config) if spec is None else spec
    name, _, target = spec.strip().partition(":")
    factory = DECISION_SINKS.get(name.strip().lower())
    if factory is None:
        raise ConfigError(f"{SETTING}: unknown sink {name.strip()!r} (known: {', '.join(sorted(DECISION_SINKS))})")
    return factory(config, target, on_fatal)
