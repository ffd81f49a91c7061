"""Where this process sits in a multi-process Bytewax cluster, and which recovery partitions it keeps.

A StatefulSet names its pods `<name>-<ordinal>` and gives each a stable DNS name through its
headless Service, so one pod template can describe every process: the process id is the ordinal at
the end of the pod's name (`NEXTCLICK_POD_NAME`, from the downward API), and the addresses are a
template expanded over the process count:

    nextclick run --processes 3 --addresses "nextclick-{i}.nextclick.prod.svc:2101"
    -> nextclick-0.nextclick.prod.svc:2101;nextclick-1...;nextclick-2...

Recovery partitions. Bytewax finds the `*.sqlite3` partitions in each process's own recovery
directory; each file records its index and the total count inside it (the name does not matter),
and the cluster needs every index exactly once across all processes. With one shared directory the
first start creates all of them there; with a directory per process (per-pod volumes) each process
creates only its own (`--recovery-per-process`): partition <process id> of <processes>.
"""

from __future__ import annotations

import logging
import shutil
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nextclick.operators.errors import NextclickError

ORDINAL_VAR = "NEXTCLICK_POD_NAME"

log = logging.getLogger("nextclick")


class ClusterError(NextclickError, ValueError):
    """The process id, addresses or recovery partitions do not describe one consistent cluster."""


@dataclass(frozen=True)
class Cluster:
    process_id: int | None = None  # None: a single process, no cluster
    addresses: tuple[str, ...] = ()

    @property
    def processes(self) -> int:
        return len(self.addresses) or 1


def ordinal(pod_name: str) -> int:
    """`nextclick-2` -> 2: the StatefulSet ordinal at the end of a pod's name."""
    _, sep, tail = pod_name.rpartition("-")
    if not sep or not tail.isdigit():
        raise ClusterError(f"{ORDINAL_VAR}={pod_name!r} does not end in -<ordinal> (a StatefulSet pod's name)")
    return int(tail)


def expand_addresses(spec: str, processes: int | None) -> tuple[str, ...]:
    """`host1:port;host2:port` as given, or a template with `{i}` expanded for i in 0..processes-1."""
    if "{i}" in spec:
        if processes is None or processes < 1:
            raise ClusterError(f"--addresses {spec!r} is a template: give --processes N, the number of processes")
        addresses = tuple(spec.replace("{i}", str(i)) for i in range(processes))
    else:
        addresses = tuple(a.strip() for a in spec.split(";") if a.strip())
        if not addresses:
            raise ClusterError(f"--addresses {spec!r} lists no address: give every process's host:port, "
                               "separated by ';'")
        if processes is not None and processes != len(addresses):
            raise ClusterError(f"--processes {processes} but --addresses lists {len(addresses)}")
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ClusterError(f"--addresses: {address!r} is not host:port")
    if len(set(addresses)) != len(addresses):
        raise ClusterError(f"--addresses: the same address appears twice in {';'.join(addresses)}")
    return addresses


def resolve(process_id: int | None, addresses: str | None, processes: int | None,
            pod_name: str | None = None) -> Cluster:
    """This process's place from the flags, with the id defaulting to the pod's ordinal."""
    if not addresses:
        if process_id is not None or processes not in (None, 1):
            raise ClusterError("--process-id and --processes need --addresses (every process's host:port)")
        return Cluster()
    expanded = expand_addresses(addresses, processes)
    if process_id is None:
        if not pod_name:
            raise ClusterError(f"--addresses needs --process-id (or {ORDINAL_VAR}, a StatefulSet pod's name)")
        process_id = ordinal(pod_name)
    if not 0 <= process_id < len(expanded):
        raise ClusterError(f"process id {process_id} is outside the {len(expanded)} processes of --addresses; "
                           f"the process count changes through a savepoint, not by adding processes")
    return Cluster(process_id, expanded)


def wait_for_names(addresses: tuple[str, ...], timeout_s: float, *,
                   lookup: Callable[..., Any] | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> None:
    """Block until the host of every address resolves, retrying with backoff up to `timeout_s`.

    A StatefulSet pod can start before the headless Service publishes its own name or a peer's
    (the records appear once each pod has an IP), and Bytewax does not retry: it exits at once
    with "failed to initialize networking". Waiting here turns that race into a short delay.
    """
    lookup = lookup or socket.getaddrinfo  # looked up now, not at import: tests replace it
    deadline = clock() + timeout_s
    delay = 0.2
    pending = list(dict.fromkeys(a.rpartition(":")[0] for a in addresses))
    while True:
        failed: dict[str, str] = {}
        for host in pending:
            try:
                lookup(host.strip("[]"), None)
            except (socket.gaierror, UnicodeError) as exc:
                failed[host] = str(exc)
        if not failed:
            return
        pending = list(failed)
        if clock() + delay > deadline:
            raise ClusterError(f"cluster address(es) did not resolve within {timeout_s:.0f}s: "
                               + ", ".join(f"{h} ({e})" for h, e in failed.items())
                               + "; check the headless Service and --addresses")
        log.warning("cluster address(es) do not resolve yet, retrying",
                    extra={"hosts": pending, "retry_in_s": round(delay, 2)})
        sleep(delay)
        delay = min(delay * 2, 5.0)


def recovery_partitions(cluster: Cluster, shared_count: int, per_process: bool) -> tuple[tuple[int, ...], int]:
    """The partition indexes this process's recovery directory holds, and the cluster's total."""
    if per_process and cluster.process_id is not None:
        return (cluster.process_id,), cluster.processes
    if shared_count < 1:
        raise ClusterError(f"--recovery-partitions must be at least 1, not {shared_count}")
    return tuple(range(shared_count)), shared_count


def partitions_in(recovery_dir: Path) -> dict[int, int]:
    """Partition index -> partition count, read from every `*.sqlite3` file in the directory."""
    found: dict[int, int] = {}
    for path in sorted(recovery_dir.glob("*.sqlite3")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT part_index, part_count FROM parts").fetchall()
        except sqlite3.Error as exc:
            raise ClusterError(f"{path} is not a Bytewax recovery partition ({exc})") from None
        finally:
            conn.close()
        for index, count in rows:
            found[int(index)] = int(count)
    return found


def prepare_recovery(recovery_dir: Path, indexes: tuple[int, ...], count: int, *, check: bool) -> str:
    """Create the partitions in a directory without any; with `check`, refuse a directory that
    holds any other set (another process's volume, or a different process count). What it did."""
    from bytewax.recovery import init_db_dir

    # Partitions, not any file: a fresh volume may hold lost+found, a lock file or a write probe.
    if not recovery_dir.exists() or not any(recovery_dir.glob("*.sqlite3")):
        recovery_dir.mkdir(parents=True, exist_ok=True)
        if indexes == tuple(range(count)):
            init_db_dir(recovery_dir, count)
        else:
            # Bytewax creates all `count` partitions at once; keep ours, on the same file system.
            scratch = recovery_dir / ".init"
            shutil.rmtree(scratch, ignore_errors=True)  # left by a start killed right here
            scratch.mkdir()
            try:
                init_db_dir(scratch, count)
                for index in indexes:
                    for part in scratch.glob(f"part-{index}.sqlite3*"):  # with any -wal/-shm companion
                        part.rename(recovery_dir / part.name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return f"created recovery partition(s) {list(indexes)} of {count} in {recovery_dir}"
    if check:
        found = partitions_in(recovery_dir)
        expected = {i: count for i in indexes}
        if found != expected:
            have = ", ".join(f"{i} of {n}" for i, n in sorted(found.items())) or "no partition"
            raise ClusterError(f"{recovery_dir} holds recovery partition(s) {have}, but this process keeps "
                               f"{', '.join(f'{i} of {count}' for i in indexes)}: a volume from another process, "
                               f"or the process count changed (that goes through a savepoint)")
    return f"resuming from {recovery_dir}"
