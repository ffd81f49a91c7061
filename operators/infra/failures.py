"""Fatal errors as one line with their root cause, and which cluster peer was lost.

Bytewax wraps an exception raised in a step into its own errors ("(src/worker.rs:149:10): error
building production dataflow", caused by ..., caused by ours), so the line an operator needs is at
the root of the chain. Rust panics are not printed: `nextclick run` runs the dataflow through
Bytewax's `cluster_main`, whose panic hook hands the panic to the caller as an exception instead
of writing "thread '...' panicked at" and a backtrace to stderr.

A lost cluster peer surfaces as a panic of Timely's network threads that names nobody.
`PeerWatch` polls this process's sockets to its peers and records which one hung up first.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import select
import socket
import sys
import threading
from typing import Sequence

from nextclick.operators.errors import NextclickError

# Bytewax prefixes its messages with the Rust source location: "(src/worker.rs:149:10): ...".
_LOCATION = re.compile(r"^\((?:src|pysrc)/[^)]*\):?\s*")
# Exceptions whose message alone says nothing ("'key'"): the class name goes in front.
_BARE = (KeyError, IndexError, TypeError, AttributeError, AssertionError, NameError, ZeroDivisionError)
# What Timely's network threads panic with when a connection to a peer breaks.
_COMMS = re.compile(r"(send|recv) thread panic|timely communication|connection reset|broken pipe|"
                    r"failed to flush writer|write failure", re.IGNORECASE)


class Explained(NextclickError, RuntimeError):
    """An error whose message already is the explanation: its causes are kept for --debug only."""


class LostPeer(Explained):
    """A process of the cluster went away; this one stops too."""


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of `exc`'s chain (`__cause__`, else an unsuppressed `__context__`),
    or the first `NextclickError` on the way (its message is already the explanation)."""
    seen = {id(exc)}
    while not isinstance(exc, NextclickError):
        nxt = exc.__cause__ if exc.__cause__ is not None else (
            None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt
    return exc


# A Rust panic's message: "panicked at src/recovery.rs:626:22:" on one line, what it says on the next.
_PANIC_AT = re.compile(r"^panicked at (\S+?):\d+:\d+:?$")
_FULL = re.compile(r"DiskFull|disk is full|No space left on device|StorageFull", re.IGNORECASE)


def one_line(exc: BaseException) -> str:
    """The root cause as one line, without Bytewax's source locations or embedded tracebacks."""
    root = root_cause(exc)
    text = str(root).strip()
    if "Caused by => " in text:  # Bytewax's `.raise()` folds the cause into the message text
        text = text.rsplit("Caused by => ", 1)[1].strip()
    lines = [_LOCATION.sub("", raw).strip() for raw in text.splitlines() if raw.strip()]
    line = lines[0] if lines else ""
    panic = _PANIC_AT.match(line)
    if panic:
        said = " ".join(lines[1:2])
        if panic.group(1).endswith("recovery.rs") and _FULL.search(text):
            # An outside probe's full recovery volume read only "panicked at src/recovery.rs:626:22:".
            return ("state.recovery_dir: the device is full (Bytewax could not write its recovery partitions: "
                    f"{said}); free or grow the volume and start again: the last committed epoch is intact")
        if said:
            return f"{type(root).__name__}: {line} {said}"
    if not line:
        return type(root).__name__
    if isinstance(root, _BARE) or type(root).__name__ == "PanicException":
        return f"{type(root).__name__}: {line}"
    return line


def is_device_full(exc: BaseException) -> bool:
    """The error says the device is full: ENOSPC, or its words in a library's message (RocksDB, SQLite)."""
    return getattr(exc, "errno", None) == errno.ENOSPC or bool(_FULL.search(str(exc)))


_STORAGE_FAILURES: list[str] = []


def note_storage_failure(where: str, error: BaseException) -> None:
    """A state store's write failed where nothing raises (RocksDB's background WAL sync): the first one is
    what a cluster's failure is then told with. An outside probe filled one pod's state volume: every
    pod said "lost cluster peer", and "No space left on device" was in no log."""
    if not _STORAGE_FAILURES:
        said = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        _STORAGE_FAILURES.append(f"{where}: {said} (state.dir)")
        logging.getLogger("nextclick").error("a state store could not write", extra={"error": _STORAGE_FAILURES[0]})


def storage_failure() -> str | None:
    """The first state store failure noted in this process, or None."""
    return _STORAGE_FAILURES[0] if _STORAGE_FAILURES else None


def announce_fatal(message: str, kind: str) -> None:
    """The fatal-error contract: one critical JSON log line (when logging is set up) and one
    `nextclick: error:` line on stderr, both with `message`."""
    if logging.getLogger().handlers:  # `run` logs JSON: the failure is one log line too
        logging.getLogger("nextclick").critical("fatal error", extra={"error": message, "exception": kind})
    print(f"nextclick: error: {message}", file=sys.stderr, flush=True)


def is_comms_failure(exc: BaseException) -> bool:
    """A Rust panic of the cluster's networking rather than an error of a step."""
    root = root_cause(exc)
    return type(root).__name__ == "PanicException" and bool(_COMMS.search(str(root)))


def lost_peer_message(addresses: Sequence[str], me: int, lost: Sequence[int]) -> str:
    """Which process was lost (or which it could have been) and what happens next."""
    others = [i for i in range(len(addresses)) if i != me]
    candidates = [i for i in lost if i in others] or others
    if len(candidates) == 1:
        who = f"process {candidates[0]} ({addresses[candidates[0]]})"
    else:
        who = "one of processes " + ", ".join(f"{i} ({addresses[i]})" for i in candidates)
    return (f"lost cluster peer: {who}; process {me} stops too, and the cluster restarts from its last "
            "committed epoch once every process is running again")


# -- which peer hung up -------------------------------------------------------------------------------


def _parse_proc_addr(text: str) -> tuple[str, int]:
    """`0100007F:7531` (IPv4) or 32 hex digits + port (IPv6), as /proc/net/tcp{,6} writes them."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host byte order (little-endian here).
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped), int(port, 16)
    return str(addr), int(port, 16)


def _established() -> dict[int, tuple[tuple[str, int], tuple[str, int]]]:
    """{socket inode: (local, remote)} of this process's established TCP connections."""
    out = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "01":  # ESTABLISHED
                out[int(cols[9])] = (_parse_proc_addr(cols[1]), _parse_proc_addr(cols[2]))
    return out


def _socket_fds() -> dict[int, int]:
    """{socket inode: fd} of this process."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(fd)
    return out


def _resolve(address: str) -> tuple[set[str], int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ips = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        ips = set()
    return ips, int(port)


def peer_sockets(addresses: Sequence[str], me: int) -> dict[int, list[int]]:
    """{fd: candidate peer indices} of this process's connections to its cluster peers.

    Process i connects to every j < i (the remote end is j's address) and accepts from every j > i
    (the local end is i's own port); an accepted connection is told apart by the peer's IP when the
    peers have distinct IPs (pods), and is ambiguous among same-host peers.
    """
    resolved = [_resolve(a) for a in addresses]
    my_port = resolved[me][1]
    fds = _socket_fds()
    out: dict[int, list[int]] = {}
    for inode, (local, remote) in _established().items():
        fd = fds.get(inode)
        if fd is None:
            continue
        outgoing = [j for j in range(me) if remote[1] == resolved[j][1] and remote[0] in resolved[j][0]]
        if outgoing:
            out[fd] = outgoing[:1]
        elif local[1] == my_port:
            out[fd] = [j for j in range(me + 1, len(addresses)) if remote[0] in resolved[j][0]] or \
                list(range(me + 1, len(addresses)))
    return out


class PeerWatch(threading.Thread):
    """Records the peer whose connection closes first (Linux; elsewhere it records nothing).

    Peers also close their connections when the dataflow completes, so `lost` means something only
    when the dataflow failed.
    """

    def __init__(self, addresses: Sequence[str], me: int) -> None:
        super().__init__(name="nextclick-peer-watch", daemon=True)
        self.addresses, self.me = list(addresses), me
        self.lost: list[int] = []
        self.stopped = threading.Event()
        self.connected = threading.Event()  # every peer's connection is up (or this cannot be watched)

    def run(self) -> None:
        if not hasattr(select, "poll") or not os.path.exists("/proc/self/net/tcp"):
            self.connected.set()
            return
        expected = len(self.addresses) - 1
        sockets: dict[int, list[int]] = {}
        while not self.stopped.is_set() and len(sockets) < expected:
            sockets = peer_sockets(self.addresses, self.me)
            if len(sockets) < expected:
                self.stopped.wait(0.5)
        self.connected.set()
        poller = select.poll()
        hangup = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
        for fd in sockets:
            poller.register(fd, hangup)
        while not self.stopped.is_set():
            for fd, _event in poller.poll(500):
                if fd in sockets:
                    self.lost = sockets[fd]
                return
