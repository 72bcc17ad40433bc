"""A rough estimate of the memory a sweep will allocate, to split it into waves that fit or refuse it up front.

`estimate(buckets, data)` adds up, for every bucket (one compiled program), the bytes of
  state        parameters x (params, optimizer slot, gradient, updated params and slot,
               the best epoch's params)
               for every seed x config, plus one unit mask per config;
  batches      one epoch's training batches per seed and data view (host copy, stacked copy,
               every device's current and next epoch) and the validation batches (every device's);
  activations  what one step keeps per model: hidden activations of a batch (forward and
               backward), the dense multi-hot batch with the dense product, the gathered
               first-layer rows with XLA's sparse product, narrow validation products;
  history      every epoch's metrics of every model as Python floats, three times (the
               history, a checkpoint snapshot's copy and its JSON text);
  kept         in a run split into waves (`runplan.in_waves`) whose trained parameters are kept
               until the end: the final and best parameters of the finished waves' models
               (run_sweep writes them at each wave's end instead: 0 there);
and `available_bytes(devices)` is what the devices report free (`memory_stats()`), else the
host's available RAM (the smaller of /proc/meminfo's MemAvailable and the cgroup's limit).
The data set itself is already loaded when the estimate is made, so it is not counted (it is
not in the available RAM either).

Calibration (jax 0.10.2, XLA:CPU, 2-core AMD EPYC, 24 GB RAM; peak RSS from /usr/bin/time -v,
minus the RSS of a process that imported jax and loaded the same data, ~0.19 GB): the book
preset (7 models, batch 512, num_words 10,000) on the real IMDB data with 1 and 4 seeds and on
--synthetic data; `CALIBRATION` lists them. The estimate came out 10% (1 seed), 13% (4 seeds)
and 27% (synthetic) above the measurement, after setting PROGRAM_OVERHEAD_BYTES and MARGIN
from the first and third runs. It is meant as an upper bound within a small factor: it lets
the book with 16 seeds run on 24 GB (8.3 GB estimated) and refuses what cannot run (a batch of
10^8 reviews: ~0.5 TB of activations; widths of 10^6 units: ~4 TB of state). Not calibrated on
GPUs, where the device's own free memory is the limit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxreg.model import count_params

FLOAT_BYTES = 4
# Arrays per parameter alive during a step: params, RMSprop slot, gradient, new params, new slot,
# and the best epoch's params that variants.run keeps (not yet in the calibration runs below);
# an optimizer with more slots per parameter (Adam: 2, `optim.OPTIMIZER_SLOTS`) holds 2 more per slot.
STATE_COPIES = 6
# Copies of an epoch's training batches: built per seed on the host and stacked (HOST_BATCH_COPIES), and
# on every device of the bucket, which holds them whole (replicated), for the current epoch and the next
# one, prepared while the devices train (DEVICE_BATCH_COPIES).
HOST_BATCH_COPIES = 2
DEVICE_BATCH_COPIES = 2
# Per hidden unit and row of a batch: pre-activation, activation, dropout mask and their gradients.
ACTIVATION_COPIES = 6
# Bytes per recorded metric value: a Python float (24) in a list (8), held three times.
HISTORY_BYTES_PER_VALUE = 3 * 32
METRICS_PER_EPOCH = 8
# Compiling and holding a program, XLA's runtime and allocator slack, per program (see CALIBRATION).
PROGRAM_OVERHEAD_BYTES = 160 * 2**20
# XLA's temporaries that the parts above do not model (fusion buffers, copies under vmap).
MARGIN = 1.2

# (run, estimate MiB, measured MiB = peak RSS minus the RSS after importing jax and loading the
# data), on XLA:CPU with jaxreg's CPU kernels, 2-core AMD EPYC, jax 0.10.2, cached IMDB encoding.
CALIBRATION = (
    ("book, real IMDB, 1 seed, 2 epochs", 895, 1011 - 197),
    ("book, real IMDB, 4 seeds, 1 epoch", 2363, 2290 - 197),
    ("book, --synthetic, 1 seed, 2 epochs", 449, 540 - 186),
    ("book, real IMDB, 16 seeds (not run: estimate only)", 8258, None),
    # before the data views' batches were counted it was estimated at 3,529 MiB (3.7 GB) and peaked above that
    (
        "learning-curve, real IMDB, 5 seeds: wave 1 of 5 under --memory-limit 4GB (16x16 + 6 of 1024x1024), 3 epochs",
        5546,
        3973 - 197,
    ),
    # Zen 1 (AMD EPYC family 23 model 1); before shard_map (every device trained every config) it peaked at 8,474 MiB
    ("four (1024, 1024) variants x 2 seeds sharded over 4 CPU devices, real IMDB, 2 epochs", 3719, 3114 - 197),
)


@dataclasses.dataclass(frozen=True)
class BucketShape:
    """What the estimate needs of one bucket: its widths, models and how its step runs."""

    widths: tuple[int, ...]
    n_seeds: int
    n_configs: int  # padded to the device count
    product: str  # "sparse" or "dense"
    sequential: bool  # variants one after the other (lax.map) instead of vmapped
    cpu_kernels: bool  # jaxreg's embedding-bag kernels (no gathered copy of the first layer's rows)
    # per model (`runplan.parameter_count`); None: the study's MLP at `widths` with one output
    parameters: int | None = None
    optimizer_slots: int = 1  # arrays the optimizer keeps per parameter (`optim.OPTIMIZER_SLOTS`)
    # data views (`jaxreg.views`: configs trained on parts of the data) of its configs: each seed's batches are
    # stacked per view, every view's padded to the longest (1: all configs train on the whole training split)
    n_views: int = 1
    # devices its configs are sharded over: each holds the data (batches, validation) whole
    n_devices: int = 1


@dataclasses.dataclass(frozen=True)
class DataShape:
    """What the estimate needs of the data and batching."""

    num_words: int
    n_train: int
    n_validation: int
    batch_size: int
    eval_batch_size: int
    train_capacity: int  # (row, column) pairs per training batch
    validation_capacity: int
    index_bytes: int = 4  # int16 or int32 batch indices


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Estimated bytes by part, summed over buckets; `driver` names what dominates."""

    state: int
    batches: int
    activations: int
    overhead: int
    history: int = 0
    kept: int = 0

    @property
    def total(self) -> int:
        return int(MARGIN * (self.state + self.batches + self.activations)) + self.overhead + self.history + self.kept

    @property
    def driver(self) -> str:
        parts = {
            "state": self.state,
            "batches": self.batches,
            "activations": self.activations,
            "history": self.history,
            "kept": self.kept,
        }
        return max(parts, key=parts.get)


def bucket_estimate(bucket: BucketShape, data: DataShape) -> Estimate:
    """The bytes one bucket's program allocates (see the module docstring)."""
    models = bucket.n_seeds * bucket.n_configs
    count = count_params(bucket.widths, data.num_words) if bucket.parameters is None else bucket.parameters
    params = count * FLOAT_BYTES
    state = params * (models * (STATE_COPIES + 2 * (bucket.optimizer_slots - 1)) + bucket.n_configs)

    n_batches = math.ceil(data.n_train / data.batch_size)
    per_row = 2 * FLOAT_BYTES  # label and weight
    train_epoch = n_batches * (2 * data.train_capacity * data.index_bytes + data.batch_size * per_row)
    n_val_batches = math.ceil(data.n_validation / data.eval_batch_size)
    validation = n_val_batches * (2 * data.validation_capacity * data.index_bytes + data.eval_batch_size * per_row)
    copies = HOST_BATCH_COPIES + DEVICE_BATCH_COPIES * bucket.n_devices
    batches = train_epoch * bucket.n_seeds * bucket.n_views * copies + validation * bucket.n_devices

    at_once = 1 if bucket.sequential else models  # models whose step runs at the same time
    rows = max(data.batch_size, data.eval_batch_size)
    hidden = rows * (sum(bucket.widths) + 1) * FLOAT_BYTES * ACTIVATION_COPIES
    if bucket.product == "dense":
        per_device = 1 if bucket.sequential else bucket.n_seeds  # one dense batch per seed a device holds
        first = rows * data.num_words * FLOAT_BYTES * per_device * bucket.n_devices
        first_per_model = 0
    else:
        first = 0
        gathered = 0 if bucket.cpu_kernels else 2 * data.train_capacity * bucket.widths[0] * FLOAT_BYTES
        narrow_validation = data.n_validation * bucket.widths[0] * FLOAT_BYTES if bucket.widths[0] <= 64 else 0
        first_per_model = gathered + narrow_validation
    activations = at_once * (hidden + first_per_model) + first
    return Estimate(state, batches, activations, PROGRAM_OVERHEAD_BYTES)


def estimate(buckets: Sequence[BucketShape], data: DataShape, epochs: int = 0) -> Estimate:
    """The whole run's estimate: every bucket's program stays allocated for the whole run, and
    the history grows with `epochs` (the only part that does)."""
    parts = [bucket_estimate(b, data) for b in buckets]
    total = Estimate(*(sum(getattr(p, f.name) for p in parts) for f in dataclasses.fields(Estimate)))
    models = sum(b.n_seeds * b.n_configs for b in buckets)
    return dataclasses.replace(total, history=history_bytes(models, epochs))


def history_bytes(models: int, epochs: int) -> int:
    """The per-epoch history of `models` models over `epochs` epochs (see the module docstring)."""
    return epochs * models * METRICS_PER_EPOCH * HISTORY_BYTES_PER_VALUE


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """The cgroup v2 limit minus its usage, when the process runs under a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def host_available_bytes() -> int:
    """RAM this process can still allocate: MemAvailable, the cgroup's room, else physical RAM."""
    known = [b for b in (_meminfo_available(), _cgroup_available()) if b is not None]
    if known:
        return max(0, min(known))
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 0  # unknown: the caller skips the comparison


def available_bytes(devices) -> tuple[int, str]:
    """(free bytes, where): the devices' own memory where JAX reports it, else host RAM."""
    free = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # backends without memory stats raise or return None
            stats = None
        if not stats or "bytes_limit" not in stats:
            return host_available_bytes(), "host RAM"
        free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return sum(free), f"{devices[0].platform} memory"


def process_rss() -> int:
    """This process's resident memory now (bytes): what it already holds (Python, jax, the data) before a run
    allocates; 0 when unknown. A `--memory-limit` is a limit on the whole process, so this is taken off it."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the peak so far: an upper bound
        return peak * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return 0


# Units of `parse_size`: decimal (as `gigabytes` prints) and binary.
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
SIZE_UNITS.update({"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30})
SIZE_UNITS["tib"] = 2**40


def parse_size(text: str) -> int:
    """Bytes of a size such as "4GB", "4096MB", "1.5 GiB" or "4000000000" (bytes); ValueError naming the forms."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in SIZE_UNITS:
        raise ValueError(
            f"{text!r} is not a size: give a number of bytes or a number with a unit, e.g. 4GB, 4096MB, 1.5GiB "
            "(units: B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024)"
        )
    size = int(float(match.group(1)) * SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r}: a memory size must be more than 0 bytes")
    return size


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
