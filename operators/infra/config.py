"""The one configuration object: a TOML file, overridden by `NEXTCLICK_*` environment variables.

Environment variables are named `NEXTCLICK_<SECTION>__<KEY>` (double underscore between section
and key), e.g. `NEXTCLICK_STATE__SHARDS=64`. Kafka client settings live in `[kafka]` under their
librdkafka names and pass through unchanged; from the environment write dots as single
underscores: `NEXTCLICK_KAFKA__SASL_MECHANISM=PLAIN` sets `sasl.mechanism`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nextclick.operators.errors import NextclickError
from nextclick.operators.infra.clock import UnitlessDuration, parse_duration_ms

DEMO_SECRET = "nextclick-demo-secret-DO-NOT-USE-IN-PRODUCTION"

DEFAULT_RULES_FILE = str(Path(__file__).resolve().parents[1] / "rules" / "default_rules.toml")


class ConfigError(NextclickError, ValueError):
    """A configuration value is missing or wrong; the message names the file and the key."""


@dataclass(frozen=True)
class TopicsConfig:
    inputs: tuple[str, ...] = ("nextclick.web", "nextclick.email", "nextclick.mobile",
                               "nextclick.store", "nextclick.call_center")
    # One topic for every decision, or one per channel: "nextclick.decisions.{channel}" sends email
    # decisions to nextclick.decisions.email, ads to nextclick.decisions.ads, and so on.
    decisions: str = "nextclick.decisions"
    dead_letter: str = "nextclick.dead_letter"
    # Erase commands (the right to erasure) while the flow runs; see operators/io/control.py.
    control: str = "nextclick.control"
    # Event-time progress of every input partition, shared between the processes of a cluster
    # (operators/io/alignment.py); compacted. "": "<control>.progress".
    progress: str = ""
    # Reading from the start of the topics the first time a group runs (before any recovery state).
    start_from_beginning: bool = True
    # What `nextclick topics create` gives the topics it creates (existing topics are left alone).
    partitions: int = 8  # inputs and decisions; -1: the broker's default
    replication_factor: int = -1  # -1: the broker's default
    retention_ms: int = 0  # 0: the broker's default; -1: keep forever
    cleanup_policy: str = ""  # "": the broker's default ("delete")
    dead_letter_retention_ms: int = 7 * 24 * 3600 * 1000  # dead letters hold PII: keep them short
    control_partitions: int = 1
    # The profile view (operators/io/profile_view.py): compacted, one record per profile changed in an
    # epoch, read by `nextclick serve`. "": not written.
    profiles: str = ""
    profiles_partitions: int = 8


def progress_topic(topics: TopicsConfig) -> str:
    """The topic the processes share their input partitions' event-time progress on."""
    return topics.progress or f"{topics.control}.progress"


def decision_topic(template: str, channel: str) -> str:
    """The topic a decision for `channel` goes to under the configured `topics.decisions`."""
    return template.replace("{channel}", channel)


@dataclass(frozen=True)
class StateConfig:
    dir: str = "var/state"
    recovery_dir: str = "var/recovery"
    # Fixed at deployment: changing it would move customers between shards.
    shards: int = 16
    # How shards are spread over the cluster's workers (operators/state/placement.py): "balanced" (each
    # worker gets every Nth shard) or "hash" (where Bytewax's hash of keys "0", "1"... puts them: 16
    # shards over 4 workers land 2, 4, 4 and 6). Fixed with the state's Bytewax recovery: state written
    # before this setting is "hash"; another placement starts from a savepoint restored into new
    # directories (docs/state.md, "Shard placement").
    shard_placement: str = "balanced"
    # Profiles held in memory per shard beyond the ones touched in the current epoch.
    cache_profiles_per_shard: int = 4096
    # Undo records kept per shard: how many checkpoints back a restore can roll.
    keep_checkpoints: int = 64
    # fsync every checkpoint; off only for benchmarks on throwaway state.
    sync: bool = True
    # Where savepoints go: an absolute path every process of the cluster reaches (a ReadWriteMany
    # mount) or an object-store URL (s3://bucket/prefix). Every process writes its own shards' parts
    # there, so a relative path (resolved in each process's own working directory) is refused. "":
    # `<state.dir>/../savepoints`, on the state's own volume (right for one process, not for a
    # cluster on per-pod volumes). The control topic names only a directory inside it.
    savepoint_dir: str = ""
    # The savepoint a new deployment starts from (like `nextclick run --from-savepoint`, which wins): used
    # when state.dir is empty, ignored once the state came from it (Flink's initialSavepointPath).
    initial_savepoint: str = ""
    # A process whose state is lost (its volume) while the cluster has run: "stop" (refuse, the operator
    # restores) or "restore": the whole cluster goes back to the latest savepoint in savepoint_dir and
    # replays the input from its positions (docs/state.md, "A lost volume").
    on_lost_volume: str = "stop"
    # Scheduled savepoints (operators/tools/schedule.py): process 0 of a running cluster takes an online
    # savepoint into savepoint_dir every interval (a duration, e.g. "1h"; "": none, the default: a
    # savepoint copies every shard, so the cost is the operator's choice) and keeps the newest
    # `savepoint_keep` complete ones. An attempt that does not complete within `savepoint_timeout` counts
    # as failed; the next one still happens. on_lost_volume = "restore" requires an interval.
    savepoint_interval: str = ""
    savepoint_keep: int = 3
    savepoint_timeout: str = "10m"

    @property
    def savepoint_interval_ms(self) -> int:
        """0: no scheduled savepoints."""
        return _duration_ms(self.savepoint_interval) if self.savepoint_interval.strip() else 0

    @property
    def savepoint_timeout_ms(self) -> int:
        return _duration_ms(self.savepoint_timeout)


@dataclass(frozen=True)
class PrivacyConfig:
    # HMAC-SHA256 key for identifiers; `secret_file` wins over `secret`. Required outside demo mode.
    secret: str = ""
    secret_file: str = ""
    demo: bool = False

    def resolve_secret(self) -> bytes:
        """The identifier-hashing key; refuses to run without one unless in demo mode."""
        if self.secret_file:
            try:
                return Path(self.secret_file).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"privacy.secret_file: cannot read {self.secret_file}: "
                                  f"{exc.strerror}") from None
        if self.secret:
            return self.secret.encode()
        if self.demo:
            return DEMO_SECRET.encode()
        raise ConfigError("privacy.secret (or NEXTCLICK_PRIVACY__SECRET, or privacy.secret_file) "
                          "is required outside demo mode")


@dataclass(frozen=True)
class ParseConfig:
    max_message_bytes: int = 64 * 1024
    # Events further ahead of the wall clock than this are refused.
    max_future_skew_ms: int = 5 * 60 * 1000
    # Events older than this are refused (0 disables the check, e.g. for backfills).
    max_age_ms: int = 30 * 24 * 3600 * 1000
    # Top-level JSON fields replaced by "[redacted]" in dead letters (TOML list or comma-separated
    # env value). Default off: dead letters keep the original bytes and can be replayed unchanged;
    # a redacted dead letter cannot. See docs/security.md.
    redact_fields: tuple[str, ...] = ()
    # Upper bound on `amount` fields; 0 keeps the schemas' own (1e9). A larger amount is a
    # schema_violation: bounded amounts keep sums such as lifetime value finite.
    max_amount: float = 0.0


@dataclass(frozen=True)
class FlowConfig:
    # Seconds per Bytewax epoch: how often state is checkpointed and input offsets recorded.
    epoch_seconds: float = 2.0
    rules_file: str = DEFAULT_RULES_FILE
    # The tracking plan (operators/events/tracking_plan.py): a TOML file adding event types and attributes
    # to the shipped schemas (schemas/events), read by the parser and the rules; "": the shipped schemas.
    tracking_plan: str = ""
    # Where decisions go (operators/io/sink_registry.py): "kafka" (topics.decisions and its channel
    # topics) or "file:<path>" (JSON lines, for local debugging); docs/architecture.md, "Adding a sink".
    decision_sink: str = "kafka"
    # Kafka consumer group used only for offset commits that monitoring tools read.
    group_id: str = "nextclick"
    # Stop at the end of the input topics instead of tailing them (tests, backfills).
    stop_at_end: bool = False
    # HOST:PORT serving /metrics, /healthz and /readyz (e.g. "0.0.0.0:9464"); empty: no server.
    metrics_address: str = ""
    # Seconds between progress log lines (0: none).
    progress_seconds: float = 30.0
    # /healthz fails when an input partition goes this long without being polled (a stuck worker).
    # Keep it above the producer's delivery.timeout.ms (300 s by default): an epoch end waits that
    # long for Kafka to take the decisions, and a broker outage should pause the flow, not restart it.
    stall_seconds: float = 360.0
    # Event-time alignment of the input partitions (docs/rules.md, "Ordering"): while the input is
    # behind, no partition delivers events more than `alignment_bound` (event time) ahead of the
    # slowest input partition that still has data, across topics and processes. Caught up, nothing
    # waits. Keep the bound well inside the rules' allowed lateness (5m by default); "0s" applies
    # every customer's events in event-time order, at a cost in catch-up throughput.
    align: bool = True
    alignment_bound: str = "1m"
    # A partition that neither delivers nor reports its end for this long (wall time) stops holding
    # the others back, like Kafka Streams' max.task.idle.ms; so does a process that stops publishing.
    alignment_idle_timeout: str = "10s"
    # How often, at most, a partition that has read all there was polls again (operators/io/kafka_source.py):
    # every partition of a process polls on one grid of this step, so live traffic runs the dataflow
    # once per tick for all of them. Longer ticks put more events in each run and cost less CPU per
    # event, and each event can wait up to one tick longer (docs/performance.md, "Live against
    # backlog"). 1ms to 100ms; a backlog never waits for it.
    poll_tick: str = "5ms"
    # The longest step that grid takes while the process is busy: from 1,000 events a second read the
    # step grows in whole poll_ticks, to this at 4,000 (kafka_source.grid_step). Equal to poll_tick (or
    # below it): the step never changes. 1ms to 100ms.
    poll_tick_max: str = "20ms"

    @property
    def poll_tick_s(self) -> float:
        return _duration_ms(self.poll_tick) / 1000

    @property
    def poll_tick_max_s(self) -> float:
        return _duration_ms(self.poll_tick_max) / 1000

    @property
    def alignment_bound_ms(self) -> int:
        return _duration_ms(self.alignment_bound)

    @property
    def alignment_idle_timeout_ms(self) -> int:
        return _duration_ms(self.alignment_idle_timeout)


def _duration_ms(text: str) -> int:
    """'1m', '500ms', '10s', or 0; raises ValueError (UnitlessDuration for any other bare number)."""
    text = str(text).strip()
    if text.isdigit():
        if int(text) == 0:
            return 0
        raise UnitlessDuration(text)
    return parse_duration_ms(text)


def _check_duration(origin: str, name: str, text: str, examples: str, most_days: int | None = None) -> int:
    """`_duration_ms` of a setting, or a ConfigError naming it (also past `most_days`)."""
    try:
        ms = _duration_ms(text)
    except UnitlessDuration as exc:
        raise ConfigError(f"{origin}: {name}: {exc}") from None
    except ValueError:
        raise ConfigError(f"{origin}: {name}: not a duration: {text!r} ({examples})") from None
    if most_days is not None and ms > most_days * _DAY_MS:
        raise ConfigError(f"{origin}: {name} must be at most {most_days}d, got {text!r}")
    return ms


@dataclass(frozen=True)
class IdentityConfig:
    # The identity rules (priorities, limits per profile, blocked values); "" = the shipped defaults
    # (operators/identity/default_identity.toml).
    file: str = ""
    # Identifiers whose resolution (linked to which profile, or not linked) the identity stage keeps
    # in memory; the rest are read from its RocksDB.
    cache_identifiers: int = 131072
    # false: no identity stitching. Every event updates the profile of the identifier it is keyed by,
    # other identifiers it names are not linked (counted as refused links, reason "stitching_off"),
    # and events go from the process that read them straight to their shard: exchanged at most once,
    # with no identity stage that sees them all (docs/architecture.md, "Scaling out"). For inputs
    # keyed by one identifier throughout (a customer id on every channel). State with linked profiles
    # cannot be switched off; switching on later starts with an empty identity graph.
    stitching: bool = True


@dataclass(frozen=True)
class ProfileConfig:
    # Recent orders kept in each profile (operators/profile/facts.py): how many, and how much older than
    # the newest the oldest may be (a duration, e.g. 90d).
    recent_orders: int = 10
    recent_orders_max_age: str = "365d"

    @property
    def recent_orders_max_age_ms(self) -> int:
        return _duration_ms(self.recent_orders_max_age)


@dataclass(frozen=True)
class ServeConfig:
    """`nextclick serve` (flows/serve.py): the profile query service."""

    address: str = "0.0.0.0:8080"
    # One bearer token per line (blank lines and lines starting with # skipped); required.
    token_file: str = ""
    # Its own RocksDB of the view topic, rebuilt from the topic when missing.
    store_dir: str = "var/serve"
    # Requests per second per bearer token (a token bucket twice as deep); 0: unlimited.
    rate_limit: float = 200.0
    # A connection that sends no whole request for this long is closed (idle keep-alive, a slow client);
    # above a proxy's own idle timeout in front of the service, so the proxy closes first.
    idle_timeout: str = "15s"

    @property
    def idle_timeout_s(self) -> float:
        return _duration_ms(self.idle_timeout) / 1000


@dataclass(frozen=True)
class Config:
    kafka: Mapping[str, str] = field(default_factory=lambda: {"bootstrap.servers": "127.0.0.1:9092"})
    topics: TopicsConfig = TopicsConfig()
    state: StateConfig = StateConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    parse: ParseConfig = ParseConfig()
    flow: FlowConfig = FlowConfig()
    identity: IdentityConfig = IdentityConfig()
    profile: ProfileConfig = ProfileConfig()
    serve: ServeConfig = ServeConfig()

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or nested fields replaced: `replace(state={"shards": 4})`."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            current = getattr(self, name)
            if name == "kafka":
                changes[name] = {**current, **value}
            elif isinstance(value, dict):
                changes[name] = dataclasses.replace(current, **value)
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)


def read_toml(path: str | os.PathLike[str], error: type[ValueError]) -> dict[str, Any]:
    """Parse a TOML file; unreadable or invalid files raise `error` naming the file and the problem."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    except RecursionError:
        raise error(f"{path}: invalid TOML: arrays or tables nested too deep to read") from None


_SECTIONS = {"topics": TopicsConfig, "state": StateConfig, "privacy": PrivacyConfig,
             "parse": ParseConfig, "flow": FlowConfig, "identity": IdentityConfig, "profile": ProfileConfig,
             "serve": ServeConfig}


_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


def _coerce(where: str, value: Any, default: Any, from_env: bool = False) -> Any:
    """Turn a TOML or environment value into the type of the field's default.

    An environment variable is always text, so text is read as a number or a switch there; in TOML a
    quoted number (`savepoint_keep = "24"`) is a mistake the file can say plainly, so it is refused."""
    if not from_env and isinstance(value, str) and isinstance(default, (bool, int, float)):
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise ConfigError(f"{where}: expected {kind}, got the string {value!r} (write it without quotes)")
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):  # `sync = 5` is a typo, not true
                raise TypeError(value)
            return value
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if isinstance(value, bool) and isinstance(default, (int, float)):
            raise TypeError(value)  # true is not a count
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)  # `shards = 2.5` is not 2
            count = int(value)
            if not _INT64_MIN <= count <= _INT64_MAX:  # Kafka and RocksDB take 64-bit integers at most
                raise ConfigError(f"{where}: must be a 64-bit integer (at most {_INT64_MAX}), got {value!r}")
            return count
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):  # nan passes every `<` check, and inf stopped `run` with no setting named
                raise ValueError(value)
            return number
        if isinstance(value, (dict, list)):
            raise TypeError(value)
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        kind = "a finite float" if type(default) is float else type(default).__name__
        raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None


def _section(name: str, raw: Mapping[str, Any], origin: str, from_env: frozenset[str] = frozenset()) -> Any:
    """One section's dataclass; `from_env` names its keys an environment variable set."""
    cls = _SECTIONS[name]
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown key [{name}].{key} (known: {', '.join(sorted(known))})")
        values[key] = _coerce(f"{origin}: [{name}].{key}", value, getattr(defaults, key), key in from_env)
    return cls(**values)


# Numeric settings' lower bounds, checked at load: (section, key, least, what the line says).
_BOUNDS: tuple[tuple[str, str, float, str], ...] = (
    ("state", "shards", 1, "at least 1"),
    ("state", "cache_profiles_per_shard", 1, "at least 1"),
    ("state", "keep_checkpoints", 1, "at least 1"),
    ("flow", "epoch_seconds", 0.01, "positive (seconds between checkpoints, e.g. 2)"),
    ("flow", "progress_seconds", 0, "at least 0 (0: no progress lines)"),
    ("flow", "stall_seconds", 0.01, "positive"),
    ("parse", "max_message_bytes", 1, "at least 1"),
    ("parse", "max_future_skew_ms", 0, "at least 0"),
    ("parse", "max_age_ms", 0, "at least 0 (0: no age limit, for backfills)"),
    ("identity", "cache_identifiers", 0, "at least 0"),
    ("topics", "partitions", 1, "at least 1, or -1 for the broker's default"),
    ("topics", "replication_factor", 1, "at least 1, or -1 for the broker's default"),
    ("topics", "retention_ms", -1, "at least -1 (-1: keep for ever, 0: the broker's default)"),
    ("topics", "dead_letter_retention_ms", -1, "at least -1 (-1: keep for ever, 0: the broker's default)"),
    ("topics", "control_partitions", 1, "at least 1"),
    ("topics", "profiles_partitions", 1, "at least 1, or -1 for the broker's default"),
    ("serve", "rate_limit", 0, "at least 0 (requests a second per token; 0: no limit)"),
)
MAX_SHARDS = 1024  # state.shards, and what `savepoint reshard --shards` may make

# Upper bounds, checked at load as the lower ones are: (section, key, most, what the line says).
_UPPER: tuple[tuple[str, str, float, str], ...] = (
    # Each shard is a RocksDB of its own and a Bytewax key: an outside probe's 100000 never finished its
    # first epoch, nor a drain after SIGTERM (4096: not ready after 25 s).
    ("state", "shards", MAX_SHARDS, f"at most {MAX_SHARDS} (each shard is a RocksDB of its own; 4-8 per core is "
                                    "plenty, docs/state.md)"),
    ("flow", "epoch_seconds", 3600, "at most 3600 (seconds between checkpoints, e.g. 2)"),
    ("flow", "stall_seconds", 7 * 24 * 3600, "at most a week (604800)"),
    ("flow", "progress_seconds", 24 * 3600, "at most a day (86400)"),
    # Each cached profile or identifier is held in memory until evicted: past this a cache is a leak.
    ("state", "cache_profiles_per_shard", 10_000_000, "at most 10000000 (profiles held in memory per shard)"),
    ("identity", "cache_identifiers", 100_000_000, "at most 100000000 (identifiers held in memory)"),
    # The Kafka protocol's own limits (partition counts are 32-bit; the client takes replication
    # factors up to 10000): past them `topics create` stopped with a C conversion error naming nothing.
    ("topics", "partitions", 2**31 - 1, "at most 2147483647 (Kafka's limit)"),
    ("topics", "profiles_partitions", 2**31 - 1, "at most 2147483647 (Kafka's limit)"),
    ("topics", "control_partitions", 2**31 - 1, "at most 2147483647 (Kafka's limit)"),
    ("topics", "replication_factor", 10_000, "at most 10000 (Kafka's limit)"),
)
# Durations' upper bound: a longer wait overflowed the savepoint scheduler's timer (a traceback, and no
# savepoint ever), and a longer bound or timeout than a year is a typo, not a setting.
_MAX_DURATION_DAYS = 366
_DAY_MS = 24 * 3600 * 1000
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Values below the bound that mean something: -1, the broker's default.
_SPECIAL: dict[tuple[str, str], tuple[float, ...]] = {
    ("topics", "partitions"): (-1,), ("topics", "replication_factor"): (-1,), ("topics", "profiles_partitions"): (-1,)}


# What Kubernetes puts in a pod's environment for a Service named nextclick-kafka (say): not a setting.
_SERVICE_VARIABLE = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)$")


def _meant_setting(var: str) -> str | None:
    """The setting a NEXTCLICK_ variable with one underscore where two go was meant for
    (NEXTCLICK_STATE_DIR: NEXTCLICK_STATE__DIR), or None for a variable that names none (NEXTCLICK_LOG_LEVEL,
    a Kubernetes Service's NEXTCLICK_SERVICE_HOST). An outside probe: NEXTCLICK_STATE_DIR was ignored, and the
    pod started an empty state on scratch disk and sent decisions from it."""
    rest = var[len("NEXTCLICK_"):]
    for section in ("kafka", *_SECTIONS):
        if not rest.lower().startswith(f"{section}_"):
            continue
        key = rest[len(section) + 1:]
        if section == "kafka":
            if key and not _SERVICE_VARIABLE.search(rest):
                return f"NEXTCLICK_KAFKA__{key}"
        elif key.lower() in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
            return f"NEXTCLICK_{section.upper()}__{key.upper()}"
    return None


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file (if any), then apply `NEXTCLICK_*` overrides from `environ`."""
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    env_keys: dict[str, set[str]] = {}  # section -> keys an environment variable set (always text)
    origin = str(path) if path else "defaults"
    if path:
        loaded = read_toml(path, ConfigError)
        for name, body in loaded.items():
            if name != "kafka" and name not in _SECTIONS:
                raise ConfigError(f"{path}: unknown section [{name}]")
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: [{name}] must be a table")
            raw[name] = dict(body)
    for var, value in environ.items():
        if not var.startswith("NEXTCLICK_"):
            continue
        if "__" not in var:
            meant = _meant_setting(var)
            if meant is not None:  # ignored, it started a new, empty deployment beside the real one
                raise ConfigError(f"{var} is not a setting: a section and its key are joined by two underscores "
                                  f"({meant})")
            continue
        section, _, key = var[len("NEXTCLICK_"):].partition("__")
        section = section.lower()
        if section == "kafka":
            key = key.lower().replace("_", ".")
        elif section in _SECTIONS:
            key = key.lower()
        else:
            raise ConfigError(f"{var}: unknown section {section!r}")
        raw.setdefault(section, {})[key] = value
        env_keys.setdefault(section, set()).add(key)
        if not origin.endswith(" + environment"):
            origin = f"{origin} + environment"
    kafka = {str(k): str(v) for k, v in raw.pop("kafka", {}).items()}
    kwargs: dict[str, Any] = {name: _section(name, body, origin, frozenset(env_keys.get(name, ())))
                              for name, body in raw.items()}
    config = Config(**kwargs)
    if kafka:
        config = config.replace(kafka=kafka)
    for section, key, least, why in _BOUNDS:
        value = getattr(getattr(config, section), key)
        if value < least and value not in _SPECIAL.get((section, key), ()):
            raise ConfigError(f"{origin}: [{section}].{key} must be {why}, got {value!r}")
    for section, key, most, why in _UPPER:
        value = getattr(getattr(config, section), key)
        if value > most:
            raise ConfigError(f"{origin}: [{section}].{key} must be {why}, got {value!r}")
    t = config.topics
    if not t.inputs:
        raise ConfigError(f"{origin}: [topics].inputs must name at least one topic, got []")
    optional = [("progress", [t.progress] if t.progress else []), ("profiles", [t.profiles] if t.profiles else [])]
    for key, names in [("inputs", t.inputs), ("decisions", [decision_topic(t.decisions, "email")]),
                       ("dead_letter", [t.dead_letter]), ("control", [t.control]), *optional]:
        for name in names:
            if not _TOPIC_NAME.fullmatch(name):
                raise ConfigError(f"{origin}: [topics].{key}: {name!r} is not a Kafka topic name (letters, digits, "
                                  f"'.', '_' and '-', at most 249{', and {channel}' if key == 'decisions' else ''})")
    if not 0 <= config.profile.recent_orders <= 1000:  # every read and write of the profile carries them
        raise ConfigError(f"{origin}: [profile].recent_orders must be from 0 to 1000, "
                          f"got {config.profile.recent_orders}")
    _check_duration(origin, "[profile].recent_orders_max_age", config.profile.recent_orders_max_age, "e.g. 90d",
                    most_days=100 * _MAX_DURATION_DAYS)
    for key, minimum in (("alignment_bound", 0), ("alignment_idle_timeout", 1)):
        text = getattr(config.flow, key)
        ms = _check_duration(origin, f"[flow].{key}", text, "e.g. 1m, 30s, 500ms", most_days=_MAX_DURATION_DAYS)
        if ms < minimum:
            raise ConfigError(f"{origin}: [flow].{key} must be {'positive' if minimum else 'at least 0'}, "
                              f"got {text!r}")
    idle_ms = _check_duration(origin, "[serve].idle_timeout", config.serve.idle_timeout, "e.g. 15s, 75s",
                              most_days=1)
    if idle_ms < 1000:
        raise ConfigError(f"{origin}: [serve].idle_timeout must be at least 1s, got {config.serve.idle_timeout!r}")
    for key in ("poll_tick", "poll_tick_max"):
        text = getattr(config.flow, key)
        tick_ms = _check_duration(origin, f"[flow].{key}", text, "e.g. 5ms, 20ms")
        if not 1 <= tick_ms <= 100:
            raise ConfigError(f"{origin}: [flow].{key} must be from 1ms to 100ms (every event can wait one "
                              f"tick), got {text!r}")
    config = config.replace(state={"savepoint_dir": savepoint_root(config.state, origin)})
    _check_savepoints_apart(config.state, origin)
    if config.state.shard_placement not in ("balanced", "hash"):
        raise ConfigError(f"{origin}: [state].shard_placement must be \"balanced\" or \"hash\", "
                          f"not {config.state.shard_placement!r}")
    if config.state.on_lost_volume not in ("stop", "restore"):
        raise ConfigError(f"{origin}: [state].on_lost_volume must be \"stop\" or \"restore\", "
                          f"not {config.state.on_lost_volume!r}")
    for key in ("savepoint_interval", "savepoint_timeout"):
        text = getattr(config.state, key)
        ms = (_check_duration(origin, f"[state].{key}", text, "e.g. 1h, 30m", most_days=_MAX_DURATION_DAYS)
              if text.strip() or key == "savepoint_timeout" else 0)
        if ms < 0 or (ms == 0 and key == "savepoint_timeout"):
            raise ConfigError(f"{origin}: [state].{key} must be positive, got {text!r}")
    if config.state.savepoint_keep < 1:
        raise ConfigError(f"{origin}: [state].savepoint_keep must be at least 1 (the newest is never deleted)")
    initial = config.state.initial_savepoint.strip()
    if initial and not (is_url(initial) or os.path.isabs(initial)):
        raise ConfigError(f"{origin}: [state].initial_savepoint: {initial!r} is relative; give the savepoint's "
                          f"absolute path or s3:// URL")
    if not (0 <= config.parse.max_amount < float("inf")):
        raise ConfigError(f"{origin}: [parse].max_amount must be a finite number >= 0 (0: the schemas' bound)")
    return config


_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://(.+)$")
SAVEPOINT_SCHEMES = ("s3",)


def is_url(location: str) -> bool:
    """An object-store location (`s3://bucket/prefix`), as opposed to a file-system path."""
    return _URL.match(location) is not None


def derived_savepoint_dir(state: StateConfig) -> str:
    """The default savepoint directory: beside `state.dir`, on the same volume, made absolute (a
    process that can write its state can write there; a relative path would be each process's own)."""
    return os.path.join(os.path.dirname(os.path.abspath(state.dir)), "savepoints")


def _check_savepoints_apart(state: StateConfig, origin: str) -> None:
    """Savepoints are the way back when a volume or a state goes: inside state.dir or state.recovery_dir,
    `state reset` deletes them with the state (an outside probe's savepoint named shard-0009 went without
    being listed), and a lost volume takes them along."""
    if is_url(state.savepoint_dir):
        return

    def within(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)

    # Resolved: a recheck probe's savepoint_dir was a symlink to state.dir, and the reset ate its savepoint.
    savepoints = os.path.realpath(state.savepoint_dir)
    for key, where in (("dir", state.dir), ("recovery_dir", state.recovery_dir)):
        other = os.path.realpath(where)
        if within(savepoints, other):
            raise ConfigError(f"{origin}: [state].savepoint_dir {state.savepoint_dir} is inside state.{key} "
                              f"({where}): `state reset` and a lost volume would take the savepoints with the state; "
                              "give savepoints a directory of their own (docs/state.md, \"Where savepoints go\")")
        if within(other, savepoints):  # a savepoint named like the state's directory would be written into it
            raise ConfigError(f"{origin}: state.{key} {where} is inside [state].savepoint_dir {state.savepoint_dir}: "
                              "savepoints and state each need a directory of their own (docs/state.md, \"Where "
                              "savepoints go\")")


def savepoint_root(state: StateConfig, origin: str = "configuration") -> str:
    """`state.savepoint_dir` checked: an absolute path or a URL of a supported scheme; "" derived."""
    value = state.savepoint_dir.strip()
    if not value:
        return derived_savepoint_dir(state)
    url = _URL.match(value)
    if url:
        if url.group(1) not in SAVEPOINT_SCHEMES:
            raise ConfigError(f"{origin}: [state].savepoint_dir: {value!r}: scheme {url.group(1)}:// is not "
                              f"supported (an absolute path, or {', '.join(s + '://' for s in SAVEPOINT_SCHEMES)})")
        return value.rstrip("/")
    if not os.path.isabs(value):
        raise ConfigError(f"{origin}: [state].savepoint_dir: {value!r} is relative, so every process would write "
                          f"its parts under its own working directory; give an absolute path every process "
                          f"reaches (a shared mount) or an s3:// URL")
    return os.path.normpath(value)
