"""An operator's typo in the configuration stops `nextclick` at load, in one line naming the setting,
before it waits for Kafka (operators/infra/config.py). Section-specific checks (savepoints, the
decision sink, alignment) are tested with their features."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextclick.operators.infra.config import ConfigError, load_config


@pytest.mark.parametrize(("var", "value", "line"), [
    ("FLOW__EPOCH_SECONDS", "0",
     "[flow].epoch_seconds must be positive (seconds between checkpoints, e.g. 2), got 0.0"),
    ("FLOW__STALL_SECONDS", "-1", "[flow].stall_seconds must be positive, got -1.0"),
    ("STATE__KEEP_CHECKPOINTS", "0", "[state].keep_checkpoints must be at least 1, got 0"),
    ("STATE__CACHE_PROFILES_PER_SHARD", "0", "[state].cache_profiles_per_shard must be at least 1, got 0"),
    ("STATE__SHARDS", "2.5", "[state].shards: expected int, got '2.5'"),
    ("PARSE__MAX_MESSAGE_BYTES", "0", "[parse].max_message_bytes must be at least 1, got 0"),
    ("PARSE__MAX_AGE_MS", "-1", "[parse].max_age_ms must be at least 0 (0: no age limit, for backfills), got -1"),
    ("TOPICS__PARTITIONS", "0", "[topics].partitions must be at least 1, or -1 for the broker's default, got 0"),
    ("TOPICS__RETENTION_MS", "-2", "[topics].retention_ms must be at least -1 (-1: keep for ever, 0: the broker's "
                                   "default), got -2"),
    ("SERVE__RATE_LIMIT", "-5", "[serve].rate_limit must be at least 0 (requests a second per token; 0: no limit), "
                                "got -5.0"),
    ("TOPICS__INPUTS", " , ", "[topics].inputs must name at least one topic, got []"),
    ("SERVE__IDLE_TIMEOUT", "500ms", "[serve].idle_timeout must be at least 1s, got '500ms'"),
    ("SERVE__IDLE_TIMEOUT", "15", "[serve].idle_timeout"),
    # An outside probe: nan passed every bound, and `run` then stopped naming no setting; a huge shard
    # count hung the first epoch and the drain.
    ("FLOW__EPOCH_SECONDS", "nan", "[flow].epoch_seconds: expected a finite float, got 'nan'"),
    ("FLOW__EPOCH_SECONDS", "inf", "[flow].epoch_seconds: expected a finite float, got 'inf'"),
    ("FLOW__EPOCH_SECONDS", "1e300", "[flow].epoch_seconds must be at most 3600 (seconds between checkpoints, "
                                     "e.g. 2), got 1e+300"),
    ("STATE__SHARDS", "100000", "[state].shards must be at most 1024 (each shard is a RocksDB of its own; 4-8 per "
                                "core is plenty, docs/state.md), got 100000"),
    ("STATE__SHARDS", "1e400", "[state].shards: expected int, got '1e400'"),
    ("TOPICS__INPUTS", "shop.web,[shop.email]", "[topics].inputs: '[shop.email]' is not a Kafka topic name (letters, "
                                                "digits, '.', '_' and '-', at most 249)"),
    ("TOPICS__DECISIONS", "out/{channel}", "[topics].decisions: 'out/email' is not a Kafka topic name (letters, "
                                           "digits, '.', '_' and '-', at most 249, and {channel})"),
    ("TOPICS__CONTROL", "", "[topics].control: '' is not a Kafka topic name"),
    # An outside probe: past Kafka's limits `topics create` stopped with "Python int too large to convert to
    # C long", naming nothing; a savepoint interval of a million days killed the scheduler with a traceback.
    ("TOPICS__PARTITIONS", "3000000000", "[topics].partitions must be at most 2147483647 (Kafka's limit), "
                                         "got 3000000000"),
    ("TOPICS__REPLICATION_FACTOR", "70000", "[topics].replication_factor must be at most 10000 (Kafka's limit)"),
    ("TOPICS__RETENTION_MS", "1" + "0" * 23, "[topics].retention_ms: must be a 64-bit integer (at most "
                                             "9223372036854775807), got '1" + "0" * 23 + "'"),
    ("STATE__CACHE_PROFILES_PER_SHARD", "1" + "0" * 12, "[state].cache_profiles_per_shard must be at most 10000000"),
    ("IDENTITY__CACHE_IDENTIFIERS", "1" + "0" * 12, "[identity].cache_identifiers must be at most 100000000"),
    ("PROFILE__RECENT_ORDERS", "1000000", "[profile].recent_orders must be from 0 to 1000, got 1000000"),
    ("STATE__SAVEPOINT_INTERVAL", "1000000d", "[state].savepoint_interval must be at most 366d, got '1000000d'"),
    ("FLOW__ALIGNMENT_BOUND", "1000000d", "[flow].alignment_bound must be at most 366d, got '1000000d'"),
    ("PROFILE__RECENT_ORDERS_MAX_AGE", "100000000d", "[profile].recent_orders_max_age must be at most 36600d"),
    ("TOPICS__DEAD_LETTER", "shop.dlq\n", "[topics].dead_letter: 'shop.dlq\\n' is not a Kafka topic name"),
])
def test_a_setting_out_of_its_range_is_named_with_the_value_given(var: str, value: str, line: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, {f"NEXTCLICK_{var}": value, "NEXTCLICK_FLOW__GROUP_ID": "g"})
    assert str(refused.value).startswith(f"defaults + environment: {line}"), str(refused.value)


def test_the_values_that_mean_the_brokers_default_or_no_limit_load() -> None:
    config = load_config(None, {"NEXTCLICK_TOPICS__PARTITIONS": "-1", "NEXTCLICK_TOPICS__REPLICATION_FACTOR": "-1",
                                "NEXTCLICK_TOPICS__RETENTION_MS": "-1", "NEXTCLICK_SERVE__RATE_LIMIT": "0",
                                "NEXTCLICK_PARSE__MAX_AGE_MS": "0", "NEXTCLICK_FLOW__PROGRESS_SECONDS": "0",
                                "NEXTCLICK_TOPICS__DECISIONS": "shop.decisions.{channel}"})
    assert (config.topics.partitions, config.serve.rate_limit, config.parse.max_age_ms,
            config.flow.progress_seconds) == (-1, 0.0, 0, 0.0)


@pytest.mark.parametrize(("toml", "line"), [
    ("[state]\nsync = 5\n", "[state].sync: expected bool, got 5"),
    ("[state]\nshards = true\n", "[state].shards: expected int, got True"),
    ("[state]\nshards = 2.5\n", "[state].shards: expected int, got 2.5"),
    ("[flow]\ngroup_id = [\"a\"]\n", "[flow].group_id: expected str, got ['a']"),
    ("[state]\nsavepoint_keep = \"24\"\n",
     "[state].savepoint_keep: expected int, got the string '24' (write it without quotes)"),
    ("[flow]\nepoch_seconds = \"2\"\n",
     "[flow].epoch_seconds: expected float, got the string '2' (write it without quotes)"),
    ("[state]\nsync = \"false\"\n",
     "[state].sync: expected true or false, got the string 'false' (write it without quotes)"),
])
def test_a_value_of_the_wrong_kind_in_the_file_is_refused_not_converted(tmp_path: Path, toml: str, line: str) -> None:
    path = tmp_path / "nextclick.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as refused:
        load_config(path, {})
    assert str(refused.value) == f"{path}: {line}"


def test_an_environment_variable_is_text_and_is_read_as_the_settings_kind(tmp_path: Path) -> None:
    path = tmp_path / "nextclick.toml"
    path.write_text("[state]\nsavepoint_keep = 3\n")
    config = load_config(path, {"NEXTCLICK_STATE__SAVEPOINT_KEEP": "24", "NEXTCLICK_STATE__SYNC": "false"})
    assert (config.state.savepoint_keep, config.state.sync) == (24, False)


@pytest.mark.parametrize(("var", "meant"), [
    ("NEXTCLICK_STATE_DIR", "NEXTCLICK_STATE__DIR"),
    ("NEXTCLICK_STATE_RECOVERY_DIR", "NEXTCLICK_STATE__RECOVERY_DIR"),
    ("NEXTCLICK_PRIVACY_SECRET", "NEXTCLICK_PRIVACY__SECRET"),
    ("NEXTCLICK_state_shards", "NEXTCLICK_STATE__SHARDS"),
    ("NEXTCLICK_KAFKA_BOOTSTRAP_SERVERS", "NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS"),
])
def test_a_setting_with_one_underscore_for_two_is_refused_naming_the_one_meant(var: str, meant: str) -> None:
    """An outside probe: NEXTCLICK_STATE_DIR was skipped as not a setting, and the pod started an empty
    state in ./var/state, replayed the input from its start and sent decisions from it."""
    with pytest.raises(ConfigError) as refused:
        load_config(None, {var: "x"})
    assert str(refused.value) == (f"{var} is not a setting: a section and its key are joined by two underscores "
                                  f"({meant})")


@pytest.mark.parametrize("var", [
    "NEXTCLICK_LOG_LEVEL", "NEXTCLICK_CONFIG", "NEXTCLICK_POD_NAME", "NEXTCLICK_NAMESPACE", "NEXTCLICK_FAILPOINTS",
    # What Kubernetes sets for Services named nextclick, nextclick-kafka, nextclick-profiles, nextclick-state.
    "NEXTCLICK_SERVICE_HOST", "NEXTCLICK_PORT", "NEXTCLICK_PORT_9100_TCP_ADDR", "NEXTCLICK_KAFKA_SERVICE_HOST",
    "NEXTCLICK_KAFKA_PORT_9092_TCP", "NEXTCLICK_PROFILES_SERVICE_PORT_HTTP", "NEXTCLICK_STATE_SERVICE_HOST",
])
def test_other_nextclick_variables_are_not_settings_and_are_left_alone(var: str) -> None:
    assert load_config(None, {var: "x"}) == load_config(None, {})


def test_a_whole_number_written_as_a_float_is_that_number(tmp_path: Path) -> None:
    path = tmp_path / "nextclick.toml"
    path.write_text("[state]\nshards = 4.0\n")
    assert load_config(path, {}).state.shards == 4


def test_the_origin_names_the_environment_once_however_many_variables_are_set() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, {"NEXTCLICK_FLOW__GROUP_ID": "g", "NEXTCLICK_STATE__SHARDS": "0",
                           "NEXTCLICK_FLOW__ALIGN": "true"})
    assert str(refused.value) == "defaults + environment: [state].shards must be at least 1, got 0"


@pytest.mark.parametrize("where", ["state", "state/savepoints", "recovery/sp"])
def test_savepoints_inside_the_state_or_recovery_directory_are_refused(tmp_path: Path, where: str) -> None:
    """An outside probe set state.savepoint_dir to state.dir: `state reset --yes` deleted a savepoint
    named shard-0009 that its dry run had not listed."""
    env = {"NEXTCLICK_STATE__DIR": str(tmp_path / "state"), "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "recovery"),
           "NEXTCLICK_STATE__SAVEPOINT_DIR": str(tmp_path / where)}
    with pytest.raises(ConfigError, match=r"\[state\].savepoint_dir .* is inside state.(dir|recovery_dir) .*: "
                                          "`state reset` and a lost volume would take the savepoints"):
        load_config(None, env)
    env["NEXTCLICK_STATE__SAVEPOINT_DIR"] = str(tmp_path / "savepoints")
    assert load_config(None, env).state.savepoint_dir == str(tmp_path / "savepoints")


def test_savepoints_reached_through_a_symlink_into_the_state_or_around_it_are_refused(tmp_path: Path) -> None:
    """A recheck probe: a savepoint_dir that is a symlink to state.dir passed the check, and the reset
    deleted the savepoint again. A state.dir inside savepoint_dir is refused too."""
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")
    env = {"NEXTCLICK_STATE__DIR": str(tmp_path / "state"), "NEXTCLICK_STATE__RECOVERY_DIR": str(tmp_path / "recovery"),
           "NEXTCLICK_STATE__SAVEPOINT_DIR": str(tmp_path / "link")}
    with pytest.raises(ConfigError, match=r"is inside state.dir"):
        load_config(None, env)
    env["NEXTCLICK_STATE__SAVEPOINT_DIR"] = str(tmp_path)
    with pytest.raises(ConfigError, match=r"state.dir .* is inside \[state\].savepoint_dir"):
        load_config(None, env)
