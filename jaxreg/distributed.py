"""One sweep across processes and hosts: starting JAX's distributed runtime, placing and gathering arrays.

Every process runs the same program on the same (deterministically loaded) data; the variant
axis is sharded over all processes' devices (`variants.variant_mesh` over `jax.devices()`).
In one process every function here is what jaxreg did before: `put` is jax.device_put, `gather`
is jax.device_get. With more processes:

- `put` builds a global array from a host value that every process holds identically
  (jax.make_array_from_callback: each process fills its own devices' shards; device_put of a
  NumPy array onto another process's devices fails);
- `gather` brings global arrays to every process as NumPy (replicated by one compiled
  identity), so process 0 has the metrics and the parameters (a checkpoint is saved by each
  process from its own shards, `jaxreg.checkpoint`);
- `agreed` gives every process process 0's decision (whether to save a checkpoint now);
- `exchange` gives every process each one's small host record (whether it can start);
- `broadcast_bytes` sends process 0's bytes (which checkpoint to resume from) to all;
- `hosts` counts the machines the processes run on (learned once, at `initialize`), so that a
  machine's RAM is counted once however many processes share it.

Every process must make the same calls in the same order (they are collectives). Process 0 is
the one that writes (`is_writer`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import re
import socket
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from jaxreg import rendezvous

# Seconds without a heartbeat after which the coordination service declares a process dead and
# stops the others. JAX's own default is 100 s; 60 s reacts sooner and still lets a busy host
# (a long XLA compilation, a slow checkpoint write) keep its heartbeat thread alive.
DEFAULT_HEARTBEAT_TIMEOUT = 60
# Seconds the processes wait for each other at start-up (jaxreg.rendezvous, then JAX's own registration).
DEFAULT_PEER_TIMEOUT = 60


class DistributedError(RuntimeError):
    """Bad distributed settings, or the runtime cannot start with them; the message names the field or cause."""


class PeersMissing(DistributedError):
    """At start-up, a process did not come within the peer timeout (or process 0 could not be reached)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How to start: `coordinator`/`num_processes`/`process_id` all given, or `auto` (detected by JAX)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
    peer_timeout: int = DEFAULT_PEER_TIMEOUT

    def __post_init__(self):
        given = [self.coordinator is not None, self.num_processes is not None, self.process_id is not None]
        if any(given) and not all(given):
            raise DistributedError(
                "--coordinator, --num-processes and --process-id go together (all three or none); got "
                f"coordinator={self.coordinator!r}, num_processes={self.num_processes!r}, process_id={self.process_id!r}"
            )
        if self.auto and any(given):
            raise DistributedError("--distributed detects the cluster itself; do not combine it with --coordinator")
        if self.coordinator is not None:
            host, _, port = self.coordinator.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise DistributedError(f"coordinator={self.coordinator!r} must be HOST:PORT, e.g. localhost:12355")
            if not isinstance(self.num_processes, int) or self.num_processes < 1:
                raise DistributedError(f"num_processes={self.num_processes!r} must be an integer >= 1")
            if not isinstance(self.process_id, int) or not 0 <= self.process_id < self.num_processes:
                raise DistributedError(
                    f"process_id={self.process_id!r} must be an integer from 0 to num_processes-1={self.num_processes - 1}"
                )
        if not isinstance(self.heartbeat_timeout, int) or self.heartbeat_timeout < 1:
            raise DistributedError(f"heartbeat_timeout={self.heartbeat_timeout!r} must be an integer >= 1 (seconds)")
        if not isinstance(self.peer_timeout, int) or self.peer_timeout < 1:
            raise DistributedError(f"peer_timeout={self.peer_timeout!r} must be an integer >= 1 (seconds)")

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator is not None


def initialize(cluster: Cluster) -> None:
    """Start JAX's distributed runtime (before anything else touches jax's devices); nothing when not enabled.

    On CPU the cross-process collectives need gloo, so that is chosen first (other platforms
    ignore the setting). With --coordinator, or for --distributed the cluster JAX detects (`detected`),
    the processes first meet in Python (jaxreg.rendezvous: a busy port, an unknown host or a process
    that does not come within `peer_timeout` seconds is a DistributedError, PeersMissing for the
    latter, and a signal ends the wait), since JAX's own wait aborts the process from C++. A process
    that stops sending heartbeats for `heartbeat_timeout` seconds is declared dead and the others
    are stopped.
    """
    if not cluster.enabled:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cluster.auto:
        coordinator, count, pid = detected(cluster.peer_timeout)
    else:
        coordinator, count, pid = cluster.coordinator, cluster.num_processes, cluster.process_id
    if coordinator is not None:
        try:
            rendezvous.meet(coordinator, count, pid, cluster.peer_timeout, rendezvous.code_version())
        except rendezvous.RendezvousError as e:
            found = (
                f" (--distributed: the cluster JAX detects has {count} processes, this is {pid})"
                if cluster.auto
                else ""
            )
            raise (PeersMissing if e.missing else DistributedError)(f"{e}{found}") from None
    try:
        jax.distributed.initialize(
            coordinator,
            count,
            pid,
            initialization_timeout=cluster.peer_timeout,
            heartbeat_timeout_seconds=cluster.heartbeat_timeout,
        )
    except (RuntimeError, ValueError) as e:
        where = (
            "the cluster JAX detects (SLURM, Open MPI, TPU)" if cluster.auto else f"coordinator {cluster.coordinator}"
        )
        raise DistributedError(f"cannot start the distributed runtime with {where}: {e}") from e
    _connect()


def detected(timeout: int) -> tuple[str | None, int | None, int | None]:
    """(coordinator, process count, this process's number) as JAX detects them for `--distributed` (SLURM,
    Open MPI, TPU VMs, Kubernetes), so that those processes too meet in Python first (`jaxreg.rendezvous`);
    Nones where JAX finds no cluster, or its detection (a private JAX function: none public gives these
    numbers before start-up) is missing or fails, and JAX's own start-up then waits as before."""
    try:
        from jax._src.clusters import ClusterEnv

        found = ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, timeout)[:3]
    except Exception:  # noqa: BLE001 -- another jax, or a cluster JAX cannot read: JAX's own start-up decides
        return None, None, None
    return found if all(x is not None for x in found) else (None, None, None)


# gloo's C++ code prints this to stdout when a process has connected to the others; nothing else is hidden.
_GLOO_CONNECTED = re.compile(r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. .*\n?$")
_host_count = 1


def _connect() -> None:
    """A first exchange right after start-up: connects the processes (gloo's connection line dropped)
    and learns how many machines they run on (`hosts`)."""
    global _host_count
    with _without_gloo_connected_line():
        records = exchange(np.frombuffer(_host_identity(), np.uint8))
    _host_count = len({bytes(r) for r in records})


def _host_identity() -> bytes:
    """32 bytes naming this machine: its host name and, where Linux has one, its boot id."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return hashlib.sha256(f"{socket.gethostname()}\n{boot}".encode()).digest()


@contextlib.contextmanager
def _without_gloo_connected_line():
    """Run the block with file descriptor 1 in a temporary file, then print what it got there except
    gloo's connection line (anything else, an error included, still reaches stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).fflush(None)  # C's stdout buffer, into the temporary file
            os.dup2(saved, 1)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stdout.write("".join(line for line in lines if not _GLOO_CONNECTED.match(line)))
            sys.stdout.flush()


def hosts() -> int:
    """How many machines this run's processes are on (1 without distribution)."""
    return _host_count if many() else 1


def is_writer() -> bool:
    """Whether this process writes the run folder (process 0; the only one without distribution)."""
    return jax.process_index() == 0


def many() -> bool:
    return jax.process_count() > 1


def put(tree, sharding):
    """Host (or single-device) values, identical on every process -> arrays laid out by `sharding`.

    `sharding` is one sharding for all leaves or a tree of them like `tree`. One process:
    jax.device_put. More: each process builds its addressable shards from its own copy.
    """
    if not many():
        return jax.device_put(tree, sharding)
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, tree)

    def one(x, s):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x), s), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree.map(one, tree, sharding)


def gather(tree):
    """Arrays (sharded over any processes' devices) -> NumPy trees with the whole value, on every process."""
    if not many():
        return jax.device_get(tree)
    # What multihost_utils.process_allgather does leaf by leaf (one compiled identity per leaf
    # shape), here for the whole tree in one program: replicate, then read the local copy.
    replicated = jax.tree.map(lambda x: jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec()), tree)
    whole = jax.jit(_identity, out_shardings=replicated)(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), whole)


def _identity(tree):
    return tree


def agreed(flag: bool) -> bool:
    """Process 0's `flag` on every process (a decision taken on process 0's clock, e.g. to save a checkpoint)."""
    if not many():
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def exchange(record: np.ndarray) -> np.ndarray:
    """Every process's `record` (same shape on all), stacked [processes, ...], on every process."""
    if not many():
        return np.asarray(record)[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(record)))


def broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's `data` on every process (the others pass None). One process: `data` itself."""
    if not many():
        return data
    from jax.experimental import multihost_utils

    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data) if is_writer() else 0)))
    if size == 0:
        return b""
    buffer = np.frombuffer(data, np.uint8) if is_writer() else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()


# Words in the errors of a cross-process exchange whose peer has gone: gloo (CPU) raises
# "Gloo AllGather failed: ... Connection reset by peer" (as JaxRuntimeError or, from jit's
# dispatch, ValueError); NCCL and the coordination service name themselves.
_LOST_PEER_WORDS = (
    "gloo",
    "nccl",
    "connection reset",
    "connection closed",
    "connection refused",
    "heartbeat",
    "coordination service",
)


def lost_peer(error: BaseException) -> bool:
    """Whether an exception raised during a distributed run looks like a lost process (vs. a bug here)."""
    text = str(error).lower()
    return any(word in text for word in _LOST_PEER_WORDS)


def describe() -> str:
    """One line for the output: which process of how many, with which devices."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} of "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s) here"
    )
