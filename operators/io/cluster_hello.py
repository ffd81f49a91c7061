"""What each process of a cluster says about itself at start, so that a cluster that cannot form says why.

Bytewax (Timely) needs every process started with the same `--workers`, the same list of
`--addresses` and one count of recovery partitions; otherwise the processes connect and then fail
with nothing but "Send thread panic" (or a closed socket), which the runner would report as a lost
peer, again at every restart. So before the dataflow runs, each process of a multi-process run
publishes a hello on the control topic (key `hello/<group>/<process>`): its release, workers,
cluster size, recovery partitions and shared settings (the `cluster_settings`, by name). When the
cluster fails, the runner reads its peers' latest hellos and, if they differ from its own, names
what differs in one line. The happy path costs one produce.

A cluster can also fail to form without failing: a process given more `--addresses` than its peers
waits in Timely's connection set-up for a process that will never come, and the peers it did reach wait
on it. So each process says its hello again (every BARRIER_REFRESH_S in its first BARRIER_FAST_S, then
every REFRESH_S) until its cluster has formed and for SAY_AFTER_FORMED_S after, and one whose cluster
has not formed within FORM_WAIT_S (`HelloWatch`) compares the hellos its peers said since it started,
within the last FRESH_MS: a live peer started otherwise stops it with the same one line. A hello of an
earlier run (say of a larger cluster, before a rescale) was said before this process started, so it
cannot stop a process that waits for a slow pod. Until the cluster forms, the process logs every
WAIT_LOG_S whom it is waiting for, and the one line of any peer that refused to start (`refusal`: a
process of a cluster says it on the control topic when it will not start, say with another shard
count), so that line is read where the wait is.

The dataflow's control reader skips hellos (operators/io/control.py), as it skips drain requests.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from nextclick.operators.exchange import setting_differences
from nextclick.operators.io.kafka_admin import client_config

log = logging.getLogger("nextclick")

# How much earlier than this process a peer's hello may have been said to count: a cluster forms
# within a pod's start-up allowance (4 minutes), and a hello older than this is an earlier start's.
LOOK_BACK_MS = 10 * 60 * 1000
REFRESH_S = 10.0  # how often a process says its hello again
SAY_AFTER_FORMED_S = 120.0  # for peers still waiting (a peer's only hello may come from before they started)
FRESH_MS = 30_000  # a hello said within this long is a live process's (three refreshes, and clock skew)
FORM_WAIT_S = 10.0  # how long peers may take to connect before their hellos are compared
WAIT_LOG_S = 30.0  # how often a process whose peers have not connected says who it waits for
CHECK_S = 5.0  # how often the watch wakes to say its hello again or compare its peers'
FIRST_CHECKS_S = 0.5  # how often in the first FORM_WAIT_S, when the cluster forms: only a flag is read
# How long a start waits for a peer whose hello says its state ran in another cluster to say so again
# (it does every REFRESH_S while it waits) before taking that hello for a stopped process's, and how often
# it reads meanwhile.
SAY_AGAIN_WAIT_S = REFRESH_S + 3.0
SAY_AGAIN_POLL_S = 1.0
BARRIER_REFRESH_S = 1.0  # how often an unformed process says its hello in its first BARRIER_FAST_S
BARRIER_FAST_S = 60.0
BARRIER_LOG_S = 30.0  # how often a start waiting for its peers' recovery progress says whom it waits for


def hello(group_id: str, process_id: int, processes: int, workers: int, recovery_partitions: int, release: str,
          settings: Mapping[str, str], now_ms: int, addresses: Sequence[str] = (),
          resumes: bool | None = None, lineage: str | None = None,
          ran_with: Sequence[str] | None = None) -> dict[str, Any]:
    """`resumes`: whether this process's state goes on from a committed epoch (StartPlan.resumes).
    `lineage`: its state's (the manifest's); `ran_with`: the lineages of the states its state last ran
    with in one cluster (`read_ran_with`), so a volume of another cluster is named before any epoch."""
    return {"command": "hello", "group_id": group_id, "process": process_id, "processes": processes,
            "workers": workers, "recovery_partitions": recovery_partitions, "release": release,
            "settings": dict(settings), "started_at": now_ms, "said_at": now_ms, "addresses": list(addresses),
            "resumes": resumes, "lineage": lineage, "ran_with": list(ran_with) if ran_with is not None else None}


# In the state directory: the lineages of the states this state last ran with in one cluster.
RAN_WITH_FILE = ".nextclick-cluster.json"


def check_same_cluster(kafka: Mapping[str, Any], topic: str, mine: Mapping[str, Any]) -> str | None:
    """Before the cluster forms: one line if a live peer's state never ran with this one's
    (`foreign_states`), else None. A peer whose hello says so but was said before this start may be a
    process that stopped (its last word stays on the topic): it must say so again, as a waiting process
    does every REFRESH_S, or be replaced by a start of its own (its `starting` supersedes it)."""
    # A peer that has said nothing yet is not waited for: it reads this hello when it starts.
    read = functools.partial(peer_hellos, kafka, topic, mine["group_id"], mine["started_at"] - FRESH_MS,
                             mine["processes"], timeout_s=3.0, current=True, poll_s=0.1, everyone_said=False)
    if foreign_states(mine, read()) is None:
        return None
    deadline = time.monotonic() + SAY_AGAIN_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(SAY_AGAIN_POLL_S)
        peers = read()
        if foreign_states(mine, peers) is None:
            return None
        line = foreign_states(mine, peers, said_since_ms=mine["started_at"])
        if line is not None:
            return line
    return None  # nothing said it again: a stopped process's hello


def read_ran_with(state_dir: str | Path, lineage: str) -> list[str] | None:
    """What `record_ran_with` wrote, if it is about this state (a restore or a reset makes a new lineage,
    and a file of the old one says nothing about it)."""
    try:
        ran_with = orjson.loads((Path(state_dir) / RAN_WITH_FILE).read_bytes())["ran_with"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(ran_with, list) or lineage not in ran_with or not all(isinstance(x, str) for x in ran_with):
        return None
    return ran_with


def record_ran_with(state_dir: str | Path, peers: Mapping[int, Mapping[str, Any]], processes: int) -> bool:
    """Once the cluster has formed: the lineage of every process's state, from their hellos (all of them,
    or nothing is written). Written whole (a rename), so a crash leaves the old file or the new one."""
    lineages = [peers[p].get("lineage") for p in range(processes) if p in peers]
    if len(lineages) < processes or not all(isinstance(x, str) for x in lineages):
        return False
    path = Path(state_dir) / RAN_WITH_FILE
    scratch = path.with_name(f"{RAN_WITH_FILE}.{os.getpid()}.tmp")  # processes sharing a directory write alike
    scratch.write_bytes(orjson.dumps({"ran_with": sorted(set(lineages))}))
    os.replace(scratch, path)
    return True


def foreign_states(mine: Mapping[str, Any], peers: Mapping[int, Mapping[str, Any]],
                   said_since_ms: int | None = None) -> str | None:
    """One line when a peer's state and this one's never ran together in one cluster, by what each
    recorded the last time its cluster formed (a state that never ran in one says nothing): a volume of
    another deployment, or of another cluster's pod, was attached, and running would mix their states.
    `said_since_ms`: only peers that said their hello since then count (a stopped process's last hello
    stays on the topic; one said since this process started is a live one's)."""
    ran_with, lineage = mine.get("ran_with"), mine.get("lineage")
    if not ran_with or not lineage:
        return None
    foreign = sorted(p for p, theirs in peers.items()
                     if p != mine["process"] and 0 <= p < mine["processes"] and theirs.get("ran_with")
                     and theirs.get("lineage") not in ran_with and lineage not in theirs["ran_with"]
                     and (said_since_ms is None or theirs["said_at"] >= said_since_ms))
    if not foreign:
        return None
    shown = ", ".join(f"process {p}'s (state {peers[p]['lineage']})" for p in foreign)
    return (f"the state volumes of this cluster never ran together: {shown} and this one's (process "
            f"{mine['process']}, state {lineage}) each last ran in another cluster, so one of them is another "
            "deployment's or another pod's volume; nothing was applied. Attach each pod's own volume, or restore "
            "a savepoint onto empty volumes (docs/state.md, \"What a cluster needs from its volumes\")")


def refusal(group_id: str, process_id: int, reason: str, now_ms: int) -> dict[str, Any]:
    """What a process of a cluster says when it will not start (a refused configuration, a missing
    topic): its peers, waiting for it to connect, name it with that line."""
    return {"command": "refused", "group_id": group_id, "process": process_id, "reason": reason[:1000],
            "said_at": now_ms}


def say_refused(kafka: Mapping[str, Any], topic: str, group_id: str, process_id: int, line: str) -> None:
    """Best effort: this process of a cluster will not start; its one line goes to the control topic, where
    the peers waiting for it to connect read it."""
    publish_hello(kafka, topic, refusal(group_id, process_id, line, int(time.time() * 1000)), timeout_s=5.0)


def starting(group_id: str, process_id: int, now_ms: int) -> dict[str, Any]:
    """What a process of a cluster says as it starts: what an earlier start of it refused no longer holds."""
    return {"command": "starting", "group_id": group_id, "process": process_id, "said_at": now_ms}


def publish_hello(kafka: Mapping[str, Any], topic: str, record: dict[str, Any], timeout_s: float = 10.0,
                  producer: Producer | None = None) -> bool:
    """Best effort: a hello (or a refusal) that cannot be published only costs the explanation of a
    failed start."""
    try:
        producer = producer or Producer(client_config(kafka))
        producer.produce(topic, orjson.dumps(record),
                         f"{record['command']}/{record['group_id']}/{record['process']}".encode())
        left = producer.flush(timeout_s)
    except KafkaException as exc:
        left, error = 1, str(exc)
    else:
        error = "timed out"
    if left:
        log.warning("could not publish this process's hello on the control topic; a cluster that fails to form "
                    "will be reported as a lost peer", extra={"topic": topic, "error": error})
    return not left


def peer_hellos(kafka: Mapping[str, Any], topic: str, group_id: str, since_ms: int, processes: int,
                timeout_s: float = 10.0, started_before_ms: int | None = None,
                refusals: dict[int, dict[str, Any]] | None = None,
                refusals_since_ms: int | None = None, current: bool = False,
                poll_s: float = 0.3, everyone_said: bool = True) -> dict[int, dict[str, Any]]:
    """Each process's latest hello for `group_id` said at or after `since_ms` (empty if unreadable);
    read until every one of `processes` has said one and the topic is quiet, or `timeout_s`.
    `started_before_ms`: only hellos of starts before then (a peer that restarted after the cluster
    failed says what its next start found, not what the failed cluster ran with). `refusals`, if given,
    gets each process's latest refusal said at or after `refusals_since_ms` (`refusal`). `current`: only
    hellos of each process's latest start (one said before its latest start or refusal is an earlier
    life's: another volume, maybe). `poll_s`: how long a read waits for more (twice with nothing: the
    topic is quiet); a start reads with a short one, not to delay its cluster's forming. `everyone_said`
    False: read to the topic's quiet end only, not waiting for processes that have said nothing yet."""
    found: dict[int, dict[str, Any]] = {}
    latest: dict[int, dict[str, Any]] = {}  # per process, its latest refusal or start
    refused_since = since_ms if refusals_since_ms is None else refusals_since_ms
    consumer = Consumer(client_config(kafka, **{"group.id": group_id, "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return found
        first = min(since_ms, refused_since) if refusals is not None else since_ms
        starts = consumer.offsets_for_times([TopicPartition(topic, p, first) for p in meta.partitions],
                                            timeout=timeout_s)
        consumer.assign([tp for tp in starts if tp.offset >= 0])
        # Not to an end-of-partition event: a broker's high watermark may lag what it has (Tansu's does),
        # and a peer whose hello is missing would be taken for one started alike.
        deadline, quiet, everyone = time.monotonic() + timeout_s, 0, set(range(processes))
        while not (quiet >= 2 and (not everyone_said or everyone <= found.keys())) and time.monotonic() < deadline:
            batch = consumer.consume(500, poll_s)
            quiet = 0 if batch else quiet + 1
            for msg in batch:
                if msg.error() is not None:
                    continue
                if (record := parse_hello(msg.value(), group_id)) is not None:
                    if record["said_at"] >= since_ms and (started_before_ms is None
                                                          or record["started_at"] < started_before_ms):
                        found[record["process"]] = record
                elif (refusals is not None or current) and (said := parse_refusal(msg.value(), group_id)) is not None:
                    last = latest.get(said["process"])
                    if last is None or said["said_at"] >= last["said_at"]:
                        latest[said["process"]] = said
    except KafkaException as exc:
        log.warning("could not read the peers' hellos", extra={"topic": topic, "error": str(exc)})
    finally:
        consumer.close()
    if current:
        for process, said in latest.items():
            if process in found and found[process]["said_at"] < said["said_at"]:
                del found[process]
    if refusals is not None:  # a refusal holds until the process starts again or says a hello
        for process, said in latest.items():
            hello_at = found[process]["said_at"] if process in found else -1
            if said["command"] == "refused" and said["said_at"] >= refused_since and said["said_at"] > hello_at:
                refusals[process] = said
    return found


def parse_hello(value: bytes | None, group_id: str) -> dict[str, Any] | None:
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("command") != "hello" or body.get("group_id") != group_id:
        return None
    counts = ("process", "processes", "workers", "recovery_partitions", "started_at")
    body.setdefault("said_at", body.get("started_at"))  # a hello said once, at start
    body.setdefault("addresses", [])
    body.setdefault("resumes", None)  # a hello from before it was said
    body.setdefault("lineage", None)  # and before these were
    body.setdefault("ran_with", None)
    if (not all(type(body.get(name)) is int for name in (*counts, "said_at"))
            or not isinstance(body.get("release"), str)
            or not isinstance(body.get("settings"), dict)
            or not all(isinstance(v, str) for v in body["settings"].values())
            or not isinstance(body["addresses"], list) or not all(isinstance(a, str) for a in body["addresses"])
            or (body["resumes"] is not None and type(body["resumes"]) is not bool)
            or (body["lineage"] is not None and not isinstance(body["lineage"], str))
            or (body["ran_with"] is not None and (not isinstance(body["ran_with"], list)
                                                  or not all(isinstance(x, str) for x in body["ran_with"])))):
        return None  # not one a process of this release wrote
    return body


def peers_not_joining(kafka: Mapping[str, Any], topic: str, group_id: str, since_ms: int, processes: int,
                      timeout_s: float = 2.0) -> dict[int, str]:
    """Why each process of the cluster will not join a wait for its generations (state.on_lost_volume =
    "restore"), said at or after `since_ms`: the line it refused to start with, or that it started with
    another state.on_lost_volume (its hello: it waits for the cluster to form instead). An outside probe's
    ConfigMap reached only one pod: the others waited 300 s and then said that pod had not reported."""
    refusals: dict[int, dict[str, Any]] = {}
    hellos = peer_hellos(kafka, topic, group_id, since_ms, processes, timeout_s=timeout_s, refusals=refusals,
                         poll_s=0.1, everyone_said=False)
    lines = {process: str(record["reason"]) for process, record in refusals.items()}
    for process, said in hellos.items():
        mode = said.get("settings", {}).get("state.on_lost_volume")
        if process not in lines and mode not in (None, "restore"):
            lines[process] = (f"it started with state.on_lost_volume = \"{mode}\", and every process of the cluster "
                              "needs the same (docs/operations.md, \"One configuration for every process\")")
    return lines


def parse_refusal(value: bytes | None, group_id: str) -> dict[str, Any] | None:
    """A refusal (`refusal`) or a start (`starting`) of a process of this group, else None."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if (not isinstance(body, dict) or body.get("command") not in ("refused", "starting")
            or body.get("group_id") != group_id
            or type(body.get("process")) is not int or type(body.get("said_at")) is not int
            or (body["command"] == "refused" and not isinstance(body.get("reason"), str))):
        return None
    return body


def differences(mine: Mapping[str, Any], peers: Mapping[int, Mapping[str, Any]]) -> str | None:
    """One line naming how the peers' hellos differ from this process's, or None if they do not."""
    parts: list[str] = []
    # A process past this cluster's size is an earlier, larger cluster's: not a peer now.
    for process in sorted(p for p in peers if p != mine["process"] and 0 <= p < mine["processes"]):
        theirs = peers[process]
        said: list[str] = []
        for name, flag in (("workers", "--workers"), ("processes", "processes in --addresses"),
                           ("recovery_partitions", "recovery partitions (--recovery-per-process or -partitions)")):
            if theirs.get(name) != mine[name]:
                said.append(f"{flag} {theirs.get(name)} there, {mine[name]} here")
        if theirs.get("processes") == mine["processes"] and theirs.get("addresses") and mine.get("addresses") \
                and theirs["addresses"] != mine["addresses"]:
            # Same count, another list (a swapped or mistyped address): each waits for a peer where none listens.
            said.append(f"--addresses {';'.join(theirs['addresses'])} there, {';'.join(mine['addresses'])} here")
        if theirs.get("release") != mine["release"]:
            # Another release declares other settings (one it does not know reads "not set"): naming them
            # would send the operator to a ConfigMap that is fine.
            said.append(f"nextclick {theirs.get('release')} there, {mine['release']} here")
        else:
            said += setting_differences(theirs.get("settings", {}), mine["settings"])
        if said:
            parts.append(f"process {process} runs with {'; '.join(said)}")
    if not parts:
        return None
    return (f"the processes of this cluster were started differently ({' / '.join(parts)}; this is process "
            f"{mine['process']}): start every process with the same --workers, --addresses, recovery flags, release "
            "and configuration (docs/operations.md, \"One configuration for every process\")")


def lost_volumes(mine: Mapping[str, Any], peers: Mapping[int, Mapping[str, Any]]) -> str | None:
    """One line when some processes start from no committed state while others resume theirs: the
    volumes of the first were lost or replaced. Bytewax then fails with only "Send thread panic" on
    every process, at every restart (each says the other was lost)."""
    said = {p: h.get("resumes") for p, h in peers.items() if 0 <= p < mine["processes"]}
    said[mine["process"]] = mine.get("resumes")
    if None in said.values():
        return None  # a peer of a release that does not say
    empty = sorted(p for p, resumes in said.items() if not resumes)
    resuming = sorted(p for p, resumes in said.items() if resumes)
    if not empty or not resuming:
        return None

    def names(processes: list[int]) -> str:
        return "process" + ("es " if len(processes) > 1 else " ") + ", ".join(map(str, processes))

    return (f"{names(empty)} started with no committed state and {names(resuming)} with the cluster's (this is "
            f"process {mine['process']}): the state and recovery volumes of {names(empty)} were lost or replaced, "
            "and the cluster cannot go on without their shards; no event was applied. Restore every process from "
            "the latest savepoint (stop them all, empty each one's volumes with `nextclick state reset`, then start "
            "each with --from-savepoint DIR), "
            "or set state.on_lost_volume = \"restore\" to do that at start (docs/state.md, \"A lost volume\")")


class HelloWatch(threading.Thread):
    """Says this process's hello again every REFRESH_S until SAY_AFTER_FORMED_S after the cluster has
    formed (`formed()`); while it has not, after FORM_WAIT_S, calls `refuse` with the line naming a
    live peer started otherwise, and logs whom it waits for."""

    def __init__(self, kafka: Mapping[str, Any], topic: str, mine: dict[str, Any], formed: Callable[[], bool],
                 refuse: Callable[[str], None], now_ms: Callable[[], int],
                 on_formed: Callable[[dict[int, dict[str, Any]]], bool] | None = None) -> None:
        """`on_formed`: given every process's hello once the cluster has formed (`record_ran_with`); asked
        again at each check until it says it is done, while hellos are said."""
        super().__init__(name="nextclick-hello", daemon=True)
        self.kafka, self.topic, self.mine, self.formed = kafka, topic, mine, formed
        self.refuse, self.now_ms, self.on_formed = refuse, now_ms, on_formed
        self.stopped = threading.Event()
        self.refused: dict[int, tuple[str, int]] = {}  # peer -> its last start's refusal and when (live_peers)

    def run(self) -> None:
        producer = Producer(client_config(self.kafka))
        started = said = time.monotonic()
        logged = started - WAIT_LOG_S  # the first check that finds the cluster unformed says so
        formed_at: float | None = None
        wait = FIRST_CHECKS_S  # the cluster forms in a moment: a short run must still record who it ran with
        checked, sleep = started, min(wait, BARRIER_REFRESH_S)
        while not self.stopped.wait(sleep):
            now = time.monotonic()
            if now - started >= FORM_WAIT_S or (formed_at is not None and self.on_formed is None):
                wait = CHECK_S
            if formed_at is None and self.formed():
                formed_at = now
                # What its recovery partitions said at start no longer holds once the cluster runs: a peer
                # that starts later must not take it for this process's progress (`recovery_barrier`).
                self.mine.pop("recovery", None)
                self.mine["formed"] = True
            if formed_at is not None:
                self.tell_formed()
            if formed_at is not None and now - formed_at > SAY_AFTER_FORMED_S:
                break
            # A peer that starts while this one waits needs a hello said since its start (`recovery_barrier`):
            # said every second for the first minute, then every REFRESH_S.
            fast = formed_at is None and now - started < BARRIER_FAST_S
            sleep = min(wait, BARRIER_REFRESH_S) if fast else wait
            if now - said >= (BARRIER_REFRESH_S if fast else REFRESH_S):
                said = now
                self.mine["said_at"] = self.now_ms()
                publish_hello(self.kafka, self.topic, self.mine, timeout_s=5.0, producer=producer)
            if formed_at is None and now - started >= FORM_WAIT_S and now - checked >= wait:
                checked = now
                peers = self.live_peers()
                line = differences(self.mine, peers)
                if line is not None and not self.formed():
                    self.refuse(line)
                    return
                if now - logged >= WAIT_LOG_S:
                    logged = now
                    self._log_waiting(now - started, peers)
        producer.flush(1.0)

    def tell_formed(self) -> None:
        """Hand `on_formed` every process's hello, until it says it is done (also once the run ends: a
        short run may end before the watch's next check)."""
        on_formed = self.on_formed
        if on_formed is None:
            return
        peers = peer_hellos(self.kafka, self.topic, self.mine["group_id"], self.mine["started_at"] - FRESH_MS,
                            self.mine["processes"], timeout_s=2.0, poll_s=0.1)
        if on_formed({**peers, self.mine["process"]: self.mine}):
            self.on_formed = None

    def live_peers(self) -> dict[int, dict[str, Any]]:
        """The peers that said a hello since this process started, lately: processes running now. Also
        keeps `refused`: the peers whose latest word, within LOOK_BACK_MS, is that their start was refused
        (a start or a hello since supersedes it)."""
        now = self.now_ms()
        since = max(now - FRESH_MS, self.mine["started_at"])
        refusals: dict[int, dict[str, Any]] = {}
        # A short read: a peer that never started never says one, and the next check is CHECK_S away.
        peers = peer_hellos(self.kafka, self.topic, self.mine["group_id"], since, self.mine["processes"],
                            timeout_s=2.0, refusals=refusals, refusals_since_ms=now - LOOK_BACK_MS)
        self.refused = {p: (r["reason"], r["said_at"]) for p, r in refusals.items() if p != self.mine["process"]}
        return peers

    def _log_waiting(self, waited: float, peers: Mapping[int, Mapping[str, Any]]) -> None:
        me, addresses = self.mine["process"], self.mine["addresses"]
        silent = [p for p in range(self.mine["processes"]) if p != me and p not in peers]
        for process, (reason, said_at) in sorted(self.refused.items()):  # why it is not running, in its words
            log.warning("the cluster has not formed: a process's last start was refused; put right what it says "
                        "and start it again", extra={
                            "refused_process": process, "address": addresses[process] if process < len(addresses)
                            else "?", "reason": reason, "seconds_ago": max(0, round((self.now_ms() - said_at) / 1000))})
        # Same count, other names (a typo, another namespace): worth a look while nothing connects.
        other = [f"process {p}: {';'.join(h['addresses'])}" for p, h in sorted(peers.items())
                 if p != me and h["addresses"] and h["addresses"] != addresses]
        log.warning("the cluster has not formed: waiting for every process in --addresses to connect", extra={
            "seconds": round(waited), "this_process": me,
            "not_running": [f"process {p} ({addresses[p] if p < len(addresses) else '?'})" for p in silent],
            "other_addresses": other})


def recovery_barrier(kafka: Mapping[str, Any], topic: str, mine: Mapping[str, Any],
                     stopped: Callable[[], bool] = lambda: False) -> list[dict[str, Any]] | None:
    """Every process's recovery progress (`recovery_db.progress_report`, in its hello as "recovery"), each
    said since this process started: rows a peer read before its cluster last ran would give an older
    resume epoch, and deleting from there would delete committed snapshots. Waits for all of them, saying
    every BARRIER_LOG_S whom it waits for, until `stopped()`; None if a live peer says no progress (another
    release, or a recovery directory with every partition) or the wait was stopped."""
    me, processes = mine["process"], mine["processes"]
    started, logged = time.monotonic(), time.monotonic()
    while not stopped():
        peers = peer_hellos(kafka, topic, mine["group_id"], mine["started_at"], processes, timeout_s=3.0,
                            current=True, poll_s=0.1, everyone_said=False)
        peers[me] = dict(mine)
        # A peer still in the cluster this process left (its hellos say it formed) stops and starts again:
        # its next start's hello holds its progress.
        if len(peers) == processes and not any(peers[p].get("formed") for p in peers):
            if not all(isinstance(peers[p].get("recovery"), dict) for p in peers):
                return None
            return [peers[p]["recovery"] for p in sorted(peers)]
        if time.monotonic() - logged >= BARRIER_LOG_S:
            logged = time.monotonic()
            log.warning("waiting for every process of the cluster to say its recovery progress before this one "
                        "resumes", extra={"seconds": round(time.monotonic() - started), "this_process": me,
                                          "waiting_for": sorted(set(range(processes)) - peers.keys())})
        time.sleep(0.5)
    return None

