"""bench.scale's parsing and model on canned inputs: no broker, no cluster, milliseconds."""

from __future__ import annotations

import pytest

from bench import scale

METRICS = """\
# TYPE bytewax_item_inp_count_total counter
bytewax_item_inp_count_total{step_id="nextclick.parse",worker_index="0",otel_scope_name="bytewax"} 60
bytewax_item_inp_count_total{step_id="nextclick.parse",worker_index="1",otel_scope_name="bytewax"} 40
bytewax_item_inp_count_total{step_id="nextclick.identity",worker_index="1",otel_scope_name="bytewax"} 100
bytewax_item_inp_count_total{step_id="nextclick.profiles",worker_index="0",otel_scope_name="bytewax"} 30
bytewax_item_inp_count_total{step_id="nextclick.profiles",worker_index="1",otel_scope_name="bytewax"} 50
bytewax_item_inp_count_total{step_id="nextclick.linked_email",worker_index="0",otel_scope_name="bytewax"} 10
bytewax_item_inp_count_total{step_id="nextclick.linked_email",worker_index="1",otel_scope_name="bytewax"} 10
bytewax_item_out_count_total{step_id="nextclick.kafka_in",worker_index="0",otel_scope_name="bytewax"} 60
process_cpu_seconds_total 1.5
"""

SS = """\
0      0      127.0.0.1:52334 127.0.0.1:36255 users:(("python",pid=1,fd=12))
\t bbr wscale:10,10 rto:204 bytes_sent:1000 bytes_acked:1000 bytes_received:2000 segs_out:9
0      0      127.0.0.1:36255 127.0.0.1:52334 users:(("python",pid=2,fd=12))
\t bbr wscale:10,10 rto:204 bytes_sent:2000 bytes_acked:2000 bytes_received:1000 segs_out:9
0      0      127.0.0.1:40000 127.0.0.1:9092 users:(("python",pid=1,fd=20))
\t bbr wscale:10,10 rto:204 bytes_sent:99999 bytes_acked:99999 bytes_received:5 segs_out:9
"""


def test_bytewax_metrics_by_step_and_worker() -> None:
    metrics = scale.parse_metrics(METRICS)
    items = scale.step_items(metrics)
    assert items["nextclick.parse"] == {0: 60.0, 1: 40.0}
    assert scale.step_items(metrics, "bytewax_item_out_count_total") == {"nextclick.kafka_in": {0: 60.0}}
    assert not any(name.startswith("process_") for name, _, _ in metrics)


def test_busiest_worker_per_stage() -> None:
    shares = scale.busiest_shares(scale.step_items(scale.parse_metrics(METRICS)))
    assert shares["input"]["share"] == pytest.approx(0.6)
    assert shares["identity"] == {"items": 100, "busiest_worker": 1, "share": 1.0, "per_worker": {"1": 100}}
    assert shares["shards"]["share"] == pytest.approx(60 / 100)  # profiles and linked_email together


def test_identity_and_shard_shares_count_events_not_lists() -> None:
    stats = {0: {"identity_items": 0, "events": 700}, 1: {"identity_items": 1000, "events": 300}}
    shares = scale.busiest_shares(scale.step_items(scale.parse_metrics(METRICS)), scale.stage_events(stats))
    assert shares["input"]["share"] == pytest.approx(0.6)  # messages read: Bytewax's count
    assert shares["identity"] == {"items": 1000, "busiest_worker": 1, "share": 1.0, "per_worker": {"1": 1000}}
    assert shares["shards"]["busiest_worker"] == 0 and shares["shards"]["share"] == pytest.approx(0.7)


def test_socket_bytes_only_between_cluster_ports() -> None:
    assert scale.parse_ss(SS, {36255, 41000}) == {("127.0.0.1:52334", "127.0.0.1:36255"): 1000,
                                                  ("127.0.0.1:36255", "127.0.0.1:52334"): 2000}
    assert scale.parse_ss(SS, {1}) == {}


def test_model_and_projection() -> None:
    m = scale.model([50e-6, 30e-6, 30e-6, 30e-6])
    assert m["c"] == pytest.approx(140e-6)
    assert m["s"] == pytest.approx(20e-6)
    assert m["capacity"] == pytest.approx(1 / 50e-6)
    assert scale.project(140e-6, 20e-6, 4) == pytest.approx(1 / 50e-6)  # the measured point
    assert scale.model([40e-6])["s"] is None


def test_markdown_and_arguments() -> None:
    settings, idle = scale.parse_args(["--events", "10", "--processes", "1,2", "--idle-seconds", "0"])
    assert settings.processes == (1, 2) and idle == 0 and settings.stitching
    assert not scale.parse_args(["--no-stitching"])[0].stitching  # FlowRun then sets identity.stitching = false
    run = {"processes": 1, "window_events_per_s": 1000.0, "events_per_s": 900.0, "startup_cpu_s": 0.4,
           "cpu_per_event_us": 40.0, "exchange_bytes_per_event": 0.0, "serial_us": None,
           "capacity_events_per_s": 25000.0, "broker_cpu_per_event_us": 2.0,
           "cpu_per_event_per_process_us": [40.0], "serial_steps_us_per_event": {"nextclick.identity": 1.2},
           "busiest": scale.busiest_shares(scale.step_items(scale.parse_metrics(METRICS)))}
    text = scale.markdown({"settings": {"events": 10, "customers": 5, "partitions": 4, "shards": 16},
                           "machine": {"cpu_count": 2, "versions": {"bytewax": "0.21.1"}}, "runs": [run]})
    assert "| 1 | 1,000 | 900 | 0.4 | 40.0 | 1.00 | 0 | 60% / 100% / 60% (≤ 150%) |" in text
