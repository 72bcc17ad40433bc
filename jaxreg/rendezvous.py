"""Before JAX's distributed runtime starts, the processes meet over a plain TCP socket: `meet`.

Why: jax.distributed.initialize waits in C++ (signals are not handled), a peer that never
comes or a coordinator that cannot be reached aborts the process with a C++ stack trace once
its timeout runs out, and a coordinator port already in use crashes it (segfault). Here the
same waits happen in Python, with a timeout, so that each fault is one line and Ctrl-C or
SIGTERM ends the wait at once: process 0 binds the coordinator port (a busy port is found
here), waits for the other processes' hellos, answers each "go" (or why not), and releases
the port for JAX's coordination service, which binds it right after; the others connect
(retrying while nobody listens yet), send a hello and wait for the answer. Only then is JAX
started, so that its own waits are short.

A hello is one JSON line: the process's number, the process count and the code version
(`code_version`); process 0 refuses a duplicate number, another count or another code.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

_POLL = 0.25  # seconds between checks of the deadline while waiting (a signal interrupts at once anyway)
_HELLO_WITHIN = 5.0  # seconds a connection gets to say hello (a peer sends it at once; anything else is dropped)


class RendezvousError(RuntimeError):
    """The processes could not meet; `missing`: some process did not come in time (vs. a bad setting)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def code_version() -> str:
    """jaxreg's version and a digest of its sources (the package's .py and csrc files): processes of one run
    must run the same code, not only the same version number."""
    from jaxreg import __version__

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*package.glob("*.py"), *package.glob("csrc/*")]):
        if path.is_file():
            digest.update(f"{path.relative_to(package)}\n".encode())
            digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def split_address(coordinator: str) -> tuple[str, int]:
    """'HOST:PORT' (HOST may be [v6]) -> (host, port)."""
    host, _, port = coordinator.rpartition(":")
    return host.strip("[]"), int(port)


def meet(coordinator: str, num_processes: int, process_id: int, timeout: float, code: str = "") -> None:
    """Wait until every process of the run has come (process 0) or process 0 said go (the others).

    RendezvousError with one line for a busy port, an unknown host, a refused hello or a
    process that did not come within `timeout` seconds (`missing`)."""
    if num_processes < 2:
        return
    if process_id == 0:
        _host(coordinator, num_processes, timeout, code)
    else:
        _join(coordinator, num_processes, process_id, timeout, code)


def _listen(port: int) -> socket.socket:
    """A listening socket on every interface at `port`, as JAX's service binds it ([::], SO_REUSEADDR)."""
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=64)
        return socket.create_server(("", port), backlog=64)
    except OSError as e:
        raise RendezvousError(
            f"the coordinator port {port} cannot be bound on this machine ({os.strerror(e.errno) if e.errno else e}); "
            "choose another free port in "
            "--coordinator for every process"
        ) from None


def _host(coordinator: str, num_processes: int, timeout: float, code: str) -> None:
    """Process 0: bind the port, collect the hellos of processes 1..N-1, answer them all, release the port."""
    _, port = split_address(coordinator)
    deadline = time.monotonic() + timeout
    peers: dict[int, socket.socket] = {}
    with _listen(port) as server:
        server.settimeout(_POLL)
        try:
            while len(peers) < num_processes - 1:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(1, num_processes)) - set(peers))
                    raise RendezvousError(
                        f"process(es) {missing} did not connect to the coordinator {coordinator} within {timeout:g} s "
                        f"(--peer-timeout); start all {num_processes} processes with the same --coordinator and "
                        "--num-processes",
                        missing=True,
                    )
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                _welcome(conn, peers, num_processes, deadline, code)
        except BaseException as e:
            why = str(e) if isinstance(e, RendezvousError) else f"process 0 stopped ({type(e).__name__})"
            _answer_all(peers, {"error": why})
            raise
        _answer_all(peers, {"go": True})


def _welcome(conn: socket.socket, peers: dict, num_processes: int, deadline: float, code: str) -> None:
    """Read one hello; keep the connection of a valid one, refuse (and raise for) a conflicting one."""
    try:
        hello = _read_line(conn, min(max(deadline - time.monotonic(), _POLL), _HELLO_WITHIN))
    except (OSError, ValueError):
        conn.close()  # not one of ours (a port scan, a process that died): ignore it
        return
    pid = hello.get("process")
    problem = None
    if hello.get("of") != num_processes:
        problem = f"process {pid} was started with --num-processes {hello.get('of')}, process 0 with {num_processes}"
    elif not isinstance(pid, int) or not 0 < pid < num_processes or pid in peers:
        problem = (
            f"two processes say they are process {pid} (or it is not 1..{num_processes - 1}); "
            "give each its own --process-id"
        )
    elif hello.get("code") != code:
        problem = f"process {pid} runs another jaxreg version or source ({hello.get('code')}, process 0: {code})"
    if problem is not None:
        _answer(conn, {"error": problem})
        raise RendezvousError(problem)
    peers[pid] = conn


def _answer_all(peers: dict, message: dict) -> None:
    for conn in peers.values():
        _answer(conn, message)


def _answer(conn: socket.socket, message: dict) -> None:
    """Send `message` and close; after a "go", wait briefly for the peer to close first, so that the port's
    TIME_WAIT stays on the peer's side."""
    try:
        conn.sendall((json.dumps(message) + "\n").encode())
        conn.settimeout(2.0)
        conn.recv(1)
    except OSError:
        pass
    finally:
        conn.close()


def _join(coordinator: str, num_processes: int, process_id: int, timeout: float, code: str) -> None:
    """Processes 1..N-1: connect to process 0 (retrying until it listens), say hello, wait for its answer."""
    host, port = split_address(coordinator)
    deadline = time.monotonic() + timeout
    conn = _connect(host, port, coordinator, deadline, timeout)
    with conn:
        try:
            conn.sendall((json.dumps({"process": process_id, "of": num_processes, "code": code}) + "\n").encode())
            answer = _read_line(conn, timeout + 5)  # process 0 decides within its own timeout
        except TimeoutError:
            raise RendezvousError(
                f"process 0 (coordinator {coordinator}) accepted this process but gave no answer within {timeout:g} s "
                "(--peer-timeout)",
                missing=True,
            ) from None
        except (OSError, ValueError) as e:
            raise RendezvousError(
                f"process 0 (coordinator {coordinator}) closed the connection: {e}", missing=True
            ) from None
    if "error" in answer:
        raise RendezvousError(
            f"process 0 refused to start: {answer['error']}", missing="did not connect" in answer["error"]
        )


def _connect(host: str, port: int, coordinator: str, deadline: float, timeout: float) -> socket.socket:
    """A connection to process 0, retried while it does not listen yet, until `deadline`."""
    while True:
        try:
            return socket.create_connection((host, port), timeout=_POLL * 4)
        except socket.gaierror as e:
            raise RendezvousError(
                f"the coordinator host {host!r} (--coordinator {coordinator}) is unknown: {e.strerror or e}"
            ) from None
        except OSError as e:
            if time.monotonic() > deadline:
                raise RendezvousError(
                    f"cannot reach process 0 at the coordinator {coordinator} within {timeout:g} s (--peer-timeout; "
                    f"last error: {e.strerror or e}); start process 0, and check the host, port and firewall",
                    missing=True,
                ) from None
            time.sleep(_POLL)


def _read_line(conn: socket.socket, timeout: float) -> dict:
    """One JSON object sent as one line (ValueError if it is not; OSError/TimeoutError from the socket)."""
    conn.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("connection closed before a whole message came")
        data += chunk
        if len(data) > 65536:
            raise ValueError("message too long")
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
