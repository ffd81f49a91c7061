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


def test_several_rates_end_with_the_fixed_and_marginal_cost_of_live_traffic() -> None:
    def live(rate: float, cores: float) -> dict[str, object]:
        return {"rate": rate, "cores": cores, "window_events": int(rate * 10), "window_s": 10.0,
                "cpu_per_event_us": 1e6 * cores / rate, "checkpoint": {"per_epoch_mean_s": 0.02,
                                                                     "per_epoch_max_s": 0.04}}
    # 0.1 cores whatever comes, and 40 µs an event on top: a live event costs what a backlog one does.
    lives = [live(r, 0.1 + r * 40e-6) for r in (2000.0, 8000.0, 12000.0)]
    fixed, marginal = live_cost.fit(lives)  # type: ignore[misc]
    assert abs(fixed - 0.1) < 1e-9 and abs(marginal - 40.0) < 1e-6
    result = {"settings": {"events": 300000, "customers": 50000}, "revision": "abc",
              "backlog": {"window_events_per_s": 25000.0, "cpu_per_event_us": 40.0,
                          "checkpoint": {"per_epoch_mean_s": 0.1, "per_epoch_max_s": 0.2}},
              "live": lives}
    text = live_cost.markdown(result)
    assert "| live at 2,000 ev/s (0.18 cores) | 2,000 | 90.0 | 2.25 (target ≤ 1.2)" in text
    assert "| live at 12,000 ev/s (0.58 cores) | 12,000 | 48.3 | 1.21 (target ≤ 1.2)" in text
    assert "live cores = 0.100 + rate x 40.0 µs (least squares over 3 rates)" in text
    assert "marginal cost is 1.00x a backlog event's" in text
    assert live_cost.fit(lives[:1]) is None
