"""bench.live_cost's table on canned figures: no broker, milliseconds."""

from __future__ import annotations

from bench import live_cost


def test_the_table_sets_live_against_the_backlog() -> None:
    result = {"settings": {"events": 300000, "customers": 50000}, "revision": "abc",
              "backlog": {"window_events_per_s": 25000.0, "cpu_per_event_us": 40.0,
                          "checkpoint": {"per_epoch_mean_s": 0.1, "per_epoch_max_s": 0.2}},
              "live": {"rate": 8000.0, "cores": 0.48, "window_events": 120000, "window_s": 15.0,
                       "cpu_per_event_us": 60.0,
                       "checkpoint": {"per_epoch_mean_s": 0.026, "per_epoch_max_s": None}}}
    text = live_cost.markdown(result)
    assert "| backlog | 25,000 | 40.0 | 1.00 | 100.0 / 200.0 |" in text
    assert "| live at 8,000 ev/s (0.48 cores) | 8,000 | 60.0 | 1.50 (target ≤ 1.2) | 26.0 / n/a" in text
