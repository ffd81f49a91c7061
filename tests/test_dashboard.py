"""The Grafana dashboard only queries metrics the code exports (deploy/grafana/nextclick.json)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import yaml

from nextclick.operators.infra import metrics
from nextclick.operators.tools import schedule  # noqa: F401 - registers the scheduled-savepoint families on the registry

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "nextclick.json"
RUNBOOK = ROOT / "docs" / "operations.md"
# Prometheus' own series, present wherever it scrapes, and the kubelet's volume figures (scraped by
# kube-prometheus-stack), which the volume alerts read.
PROMETHEUS_SERIES = {"up", "kubelet_volume_stats_available_bytes", "kubelet_volume_stats_capacity_bytes"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
             "unknown": ("",), "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount")}


def exported_names() -> set[str]:
    """Every sample name the registry can produce, labelled families without children included."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and variables excluded)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][\w:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or an operator keyword
        names.add(match.group())
    return names


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating query."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else None
        if var["type"] == "query" and text:
            selector = re.fullmatch(r"\s*label_values\((.+),\s*\w+\)\s*", text)
            yield f"variable {var['name']}", selector.group(1) if selector else text


def test_metric_name_extraction() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le, channel) (rate(a_bucket{job=~"$job"}[5m])))') == \
        {"a_bucket"}
    assert metric_names("sum(rate(a_sum[$__rate_interval])) / sum(rate(a_count[1m])) > bool 0") == \
        {"a_sum", "a_count"}
    assert metric_names('topk(10, max by (topic, partition) (lag{x="a b"}))') == {"lag"}
    assert metric_names("up offset 5m and on(instance) process_open_fds") == {"up", "process_open_fds"}


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    exported = exported_names()
    found = list(queries(dashboard))
    assert len(found) >= 20
    unknown = {(where, name) for where, expr in found for name in metric_names(expr) if name not in exported}
    assert not unknown, f"the dashboard queries metrics nothing exports: {sorted(unknown)}"
    # Every family the flow defines appears somewhere (a new metric gets a panel).
    used = {name for _, expr in found for name in metric_names(expr)}
    own = {f.name for f in metrics.REGISTRY.collect() if f.name.startswith("nextclick_")}
    missing = sorted(name for name in own if not any(u.startswith(name) for u in used))
    assert not missing, f"metric families without a panel: {missing}"


@pytest.mark.parametrize("title", ["Consumer lag by topic", "Decisions/s by rule and channel",
                                   "Dead letters/s by reason", "Epoch duration (p50, p99)",
                                   "Checkpoint time per shard (p99, mean)", "Input messages/s by topic"])
def test_the_dashboard_has_the_panels_the_runbook_names(title: str) -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    titles = {p["title"] for p in dashboard["panels"]}
    assert title in titles


def runbook_rules() -> list[dict[str, Any]]:
    """The Prometheus rules of docs/operations.md (its first yaml block), as Prometheus would load them."""
    block = RUNBOOK.read_text().split("```yaml", 1)[1].split("```", 1)[0]
    return [rule for group in yaml.safe_load(block)["groups"] for rule in group["rules"]]


def runbook_alerts() -> dict[str, str]:
    """{alert: expr} of the Prometheus rules in docs/operations.md."""
    return {rule["alert"]: " ".join(rule["expr"].split()) for rule in runbook_rules()}


def test_runbook_alerts_query_only_exported_metrics() -> None:
    alerts = runbook_alerts()
    assert {"NextclickNotReady", "NextclickLagGrowing", "NextclickDeadLetterRate", "NextclickProcessingErrors",
            "NextclickCheckpointSlow"} <= set(alerts)
    exported = exported_names() | PROMETHEUS_SERIES
    unknown = {(alert, name) for alert, expr in alerts.items() for name in metric_names(expr) if name not in exported}
    assert not unknown, f"runbook alerts query metrics nothing exports: {sorted(unknown)}"
    assert "nextclick_consumer_lag_messages" in alerts["NextclickLagGrowing"]


def headings(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    anchors = headings(RUNBOOK.read_text())
    for rule in runbook_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[0].endswith("/operations.md") and url.split("#")[1] in anchors, (rule["alert"], url)
        assert rule["annotations"]["summary"], rule["alert"]
    assert {"NextclickRestarting", "NextclickVolumeFilling", "NextclickVolumeAlmostFull",
            "NextclickEpochNotCommitted", "NextclickDeliveryErrors", "NextclickSavepointStale"} <= set(runbook_alerts())


def test_alerts_on_counters_catch_the_first_occurrence_of_a_new_label_set() -> None:
    """`increase(x[w]) > 0` needs two samples of a series: a child created by its first increment (value 1)
    is never seen. Each such rule also selects the series that did not exist a window ago."""
    checked = 0
    for alert, expr in runbook_alerts().items():
        for counter in set(re.findall(r"increase\((\w+)\[(\w+)\]\)", expr)):
            name, window = counter
            assert re.search(rf"{name}\s+unless\s+{name}\s+offset\s+{window}\b", expr), (alert, name)
            checked += 1
    assert checked >= 3


def test_lag_and_staleness_alerts_are_silent_while_alignment_holds_a_partition_back() -> None:
    alerts = runbook_alerts()
    for alert in ("NextclickLagGrowing", "NextclickPartitionStuck", "NextclickDecisionsStale"):
        assert re.search(r"\bunless\b.*rate\(nextclick_input_held_seconds_total\[", alerts[alert]), alert


def test_metric_names_follow_the_unit_conventions() -> None:
    """Prometheus naming: a point in time ends `_timestamp_seconds`, a duration `_duration_seconds`."""
    for family in metrics.REGISTRY.collect():
        if not family.name.startswith("nextclick_") or not family.name.endswith("_seconds"):
            continue
        if family.type == "gauge":
            assert family.name.endswith("_timestamp_seconds"), family.name
        elif family.type == "histogram":
            assert family.name.endswith("_duration_seconds"), family.name
    info = {s.name: s.labels for f in metrics.REGISTRY.collect() for s in f.samples}
    assert {"version", "bytewax", "librdkafka", "python"} <= set(info["nextclick_build_info"])
