"""A shard's timer turns, by the input's event-time frontier (operators/frontier.py).

Customers fall due on the store's timer index (written profiles) or on their own due time (dirty ones,
whose index keys are stale). A turn takes a bounded number of them, so a storm of due timers after
downtime drains over several turns while input keeps flowing. Profiles in the cache are turned in
place and written with the rest of the dirty; profiles only the store holds are read, turned and
written back at once (`_fire_cold`), never entering the cache.
"""

from __future__ import annotations

from nextclick.operators.engine.steps import due_at
from nextclick.operators.frontier import EventTimeFrontier
from nextclick.operators.infra import metrics
from nextclick.operators.profile.codec import decode_profile, encode_profile
from nextclick.operators.profile.facts import ProfileEncodeError
from nextclick.operators.profile.model import Profile
from nextclick.operators.records import Outcome
from nextclick.operators.rules.model import RuleSet
from nextclick.operators.shard.cache import ProfileCache
from nextclick.operators.shard.common import EngineSteps, ShardOutput, account, undo_outcome
from nextclick.operators.state.keys import QUARANTINED, profile_key
from nextclick.operators.state.store import UNKNOWN, KeyValueStore, Unknown
from nextclick.operators.state.timers import TimerIndex

# Customers handled per RocksDB multi-get when many timers fall due at once.
TIMER_CHUNK = 1000
# Due customers handled per timer turn; the rest wait for the next one, so a burst can't stall input.
TIMER_LIMIT = 2000


class TimerRunner:
    """Runs the timer turns of one shard's customers at its frontier."""

    def __init__(self, store: KeyValueStore, timers: TimerIndex, frontier: EventTimeFrontier, cache: ProfileCache,
                 ruleset: RuleSet, steps: EngineSteps,
                 waiting: dict[str, set[str]] | None = None) -> None:
        self.store, self.timers, self.frontier, self.cache = store, timers, frontier, cache
        self.ruleset, self.steps = ruleset, steps
        # Customers waiting for moved profiles (the merge barrier's): their turn comes once merged.
        self.waiting: dict[str, set[str]] = {} if waiting is None else waiting

    def next_due(self) -> int | None:
        """When the earliest timer falls due (on the frontier; may be early but never late), or None."""
        return self.timers.earliest()

    def due_now(self) -> bool:
        """Whether a timer turn has work at the frontier as it stands (False while it is unknown)."""
        due, now = self.timers.earliest(), self.frontier.now()
        return due is not None and now is not None and due <= now

    def fire_due(self) -> list[ShardOutput]:
        """The timer turn at the frontier as it stands (nothing while it is unknown)."""
        now = self.frontier.now()
        return [] if now is None else self.fire(now)

    def fire(self, now: int) -> list[ShardOutput]:
        """The timer turn at frontier `now`: every customer due by it (a bounded number per call)."""
        self.cache.new_turn()
        out: list[ShardOutput] = []
        due = self.due_customers(now)
        if self.waiting:  # their turn comes once their merge is done
            due = [(customer, at) for customer, at in due if customer not in self.waiting]
        live = self.cache.live
        cold = [(customer, at) for customer, at in due if customer not in live]
        if len(cold) < len(due):
            self._fire_live([(customer, at) for customer, at in due if customer in live], now, out)
        for start in range(0, len(cold), TIMER_CHUNK):
            self._fire_cold(cold[start:start + TIMER_CHUNK], now, out)
        return out

    def due_customers(self, now_ms: int) -> list[tuple[str, int]]:
        """Customers whose timers are due by `now_ms`: written ones from the store's index, dirty
        ones from their own due time (their index keys are stale), so nothing is written first."""
        dirty_due = self.cache.dirty_due
        due = self.timers.due(now_ms, TIMER_LIMIT, skip=dirty_due)
        for customer, at in dirty_due.items():
            if at is not None and at <= now_ms:
                due.append((customer, at))
            else:
                self.timers.hint(at)
        return due

    def fire_one(self, customer: str, now: int, out: list[ShardOutput]) -> None:
        """One customer's timer turn at `now`, if anything of theirs is due by then (a merge's, at its link's
        time: operators/shard/shard_state.py). A customer with nothing stored is not created."""
        profiles, created, _ = self.cache.load([customer])
        profile = profiles.get(customer)  # None: quarantined
        if customer in created:
            self.cache.live.pop(customer, None)
        elif profile is not None and (due := due_at(profile, self.ruleset)) is not None and due <= now:
            self._fire_live([(customer, due)], now, out)

    def _fire_live(self, due: list[tuple[str, int]], now: int, out: list[ShardOutput]) -> None:
        """Timer turns of profiles in the cache: changed in place, written with the rest of the dirty."""
        cache = self.cache
        profiles, _, _ = cache.load([customer for customer, _ in due])
        cache.changing(profiles, dict(due))
        outcome = Outcome()
        for customer, profile in list(profiles.items()):
            self.run(customer, profile, now, outcome, profiles)
        cache.changed(profiles)
        account(outcome, out, profiles)

    def _fire_cold(self, due: list[tuple[str, int]], now: int, out: list[ShardOutput]) -> None:
        """Timer turns of profiles only the store holds: read, turned and written back at once.

        A storm after downtime is mostly these. They never enter the cache, so the drain neither evicts
        the customers live traffic is using nor pays for the dirty bookkeeping of profiles that change
        once; and, written at once, they need no replay log (a failed turn is undone by not writing).
        """
        store, timers, ruleset, on_timers = self.store, self.timers, self.ruleset, self.steps.on_timers
        set_aside = self.cache.set_aside
        keys = [profile_key(customer) for customer, _ in due]
        outcome = Outcome()
        turned: dict[str, Profile] = {}
        for (customer, at), key, blob in zip(due, keys, store.get_many(keys), strict=True):
            committed: bytes | None | Unknown = blob if store.unchanged_since_checkpoint(key) else UNKNOWN
            if blob is None or blob == QUARANTINED:
                # A timer with no profile behind it (erased), or one set aside: drop it, never let it
                # bring the customer back or fire for them.
                timers.move(customer, at, None)
                continue
            try:
                profile = decode_profile(blob)
            except Exception as exc:  # noqa: BLE001 - bad stored bytes are one customer's problem
                set_aside(customer, "decode_profile", exc, blob, profile_due=at)
                continue
            marks = (len(outcome.decisions), len(outcome.blocked), outcome.absences)
            try:
                on_timers(profile, ruleset, now, outcome)
            except Exception as exc:  # noqa: BLE001 - a timer that keeps failing would spin: set it aside
                undo_outcome(outcome, *marks)
                metrics.PROCESSING_ERRORS.labels("engine.on_timers", type(exc).__name__).inc()
                set_aside(customer, "engine.on_timers", exc, blob, profile_due=at)
                continue
            try:
                encoded = encode_profile(profile)
            except ProfileEncodeError as exc:
                # Never store a value that would not read back as written (e.g. a non-finite number).
                undo_outcome(outcome, *marks)
                set_aside(customer, "encode_profile", exc, blob, profile_due=at)
                continue
            store.put(key, encoded, committed=committed)
            self.cache.mark_viewed(customer)
            timers.move(customer, at, due_at(profile, ruleset), committed=committed is not UNKNOWN)
            turned[customer] = profile
        account(outcome, out, turned)

    def run(self, customer: str, profile: Profile, now: int, outcome: Outcome,
            profiles: dict[str, Profile]) -> bool:
        """One cached customer's timer turn at `now`; False if it failed and the customer was set aside
        (and removed from `profiles`)."""
        marks = (len(outcome.decisions), len(outcome.blocked), outcome.absences)
        try:
            self.steps.on_timers(profile, self.ruleset, now, outcome)
        except Exception as exc:  # noqa: BLE001 - a timer that keeps failing would spin: set it aside
            undo_outcome(outcome, *marks)
            metrics.PROCESSING_ERRORS.labels("engine.on_timers", type(exc).__name__).inc()
            del profiles[customer]
            self.cache.live.pop(customer, None)
            self.cache.set_aside(customer, "engine.on_timers", exc, None,
                                      profile_due=self.cache.dirty.get(customer))
            return False
        self.cache.applied.setdefault(customer, []).append(now)
        return True

    def due_after_batch(self, profiles: dict[str, Profile], outcome: Outcome, *,
                        turn: bool = True) -> dict[str, int | None]:
        """Due times of profiles a batch just changed, after running the timer turn of those already due.

        A profile can be due on the frontier as soon as its events are applied (the frontier went past
        its deadline in the same batch, or the input is caught up and its deadline is past). Its turn
        would come at the next notification anyway, a moment later, after a round through the timer
        index; running it here, on the profile in hand, is the same turn without that round. Removes
        from `profiles` any customer whose turn failed (set aside).

        Not for a run applied in the middle of a batch (`turn` false): the rest of the batch may still
        hold the customer's events before the deadline (a second merge's login, which the merge
        barrier releases later in the batch), and the turn must see them, as it does however the
        input was batched. Their turn comes at the next notification. (A customer still waiting for
        moved profiles has its events held, so it is never in a run.)
        """
        ruleset = self.ruleset
        dues: dict[str, int | None] = {}
        now = self.frontier.now() if turn else None
        for customer, profile in list(profiles.items()):
            due = due_at(profile, ruleset)
            if due is not None:
                if now is not None and due <= now:
                    if not self.run(customer, profile, now, outcome, profiles):
                        continue
                    due = due_at(profile, ruleset)
            dues[customer] = due
        return dues
