"""Helpers shared by the benchmark scripts: data loading, the study's seven models, memory
measurement, machine description, Markdown tables and JSON output.

Not a benchmark itself. Uses only jaxreg's public API.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"

# The study's seven models (Deep Learning with Python, 4.4); see docs/spec.md.
# name -> (hidden widths, l1, l2, dropout rate), penalties on the two hidden kernels.
STUDY_MODELS: dict[str, tuple[tuple[int, ...], float, float, float]] = {
    "original": ((16, 16), 0.0, 0.0, 0.0),
    "smaller": ((6, 6), 0.0, 0.0, 0.0),
    "bigger": ((1024, 1024), 0.0, 0.0, 0.0),
    "l2": ((16, 16), 0.0, 0.001, 0.0),
    "l1": ((16, 16), 0.0001, 0.0, 0.0),
    "l1_l2": ((16, 16), 0.0001, 0.0001, 0.0),
    "dropout": ((16, 16), 0.0, 0.0, 0.5),
}


def add_data_args(parser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("JAXREG_DATA") or DEFAULT_DATA),
        help="aclImdb archive or folder (default: env JAXREG_DATA, else ../shared/data/aclImdb_v1_labeled.tar.gz)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="jaxreg's encoded-data cache (default: env JAXREG_CACHE, else ~/.cache/jaxreg); first load ~15 s, then ~40 ms",
    )


def load_dataset(args):
    """jaxreg's load_imdb with the script's --data / --cache-dir (test set as validation, as the book)."""
    from jaxreg.data import load_imdb

    return load_imdb(args.data, cache_dir=args.cache_dir)


# The grid preset's names (experiments/presets/grid.py variant_name): 'w16_l2=0.001_do=0.5'.
GRID_NAME = re.compile(r"w(\d+)_l2=([0-9.e+-]+)_do=([0-9.]+)")


def model_settings(name: str) -> tuple[tuple[int, ...], float, float, float]:
    """(hidden widths, l1, l2, dropout rate) of a study model or of a grid preset name ('w16_l2=0.001_do=0.5')."""
    if name in STUDY_MODELS:
        return STUDY_MODELS[name]
    match = GRID_NAME.fullmatch(name)
    if match is None:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(STUDY_MODELS)}, 'all' or a grid name")
    width = int(match.group(1))
    return (width, width), 0.0, float(match.group(2)), float(match.group(3))


def parse_models(text: str | None) -> list[str]:
    """'original,bigger' -> ['original', 'bigger'] (study order kept, then grid names as given); 'all' -> all seven."""
    if text is None or text == "all":
        return list(STUDY_MODELS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SystemExit("no model named; choose from the study's models, 'all' or grid names")
    for name in names:
        model_settings(name)  # refuses unknown names
    return [n for n in STUDY_MODELS if n in names] + [n for n in names if n not in STUDY_MODELS]


def study_variants(names: Sequence[str], optimizer: str = "keras3", seed: int = 0):
    """The named study models as jaxreg VariantSpecs."""
    from jaxreg.variants import VariantSpec

    out = []
    for name in names:
        widths, l1, l2, rate = model_settings(name)
        out.append(VariantSpec(name, widths, l1=l1, l2=l2, dropout_rate=rate, optimizer=optimizer, seed=seed))
    return out


# --- memory -----------------------------------------------------------------------------


def ru_maxrss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


# Started in between the caller and a measured command: see measured_process.
_LAUNCHER = """
import json, os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda number, frame: child.send_signal(number))
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "user": usage.ru_utime, "system": usage.ru_stime, "maxrss": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def measured_process(cmd: list, env: dict | None = None, capture: bool = False) -> dict:
    """Run a command to its end: wall s, CPU s (user + system, all its threads), cores used (CPU s / wall),
    peak RSS (the kernel's ru_maxrss of that process), the load average just before, and with `capture` its
    stdout and stderr text.

    The command is started by a small launcher process that reads its rusage (os.wait4), not by this one: on
    Linux a child's ru_maxrss starts at the high-water mark of the memory it was forked from, so a command
    started directly by a 1.4 GB test process reports at least 1.4 GB whatever it uses itself."""
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        report, out, err = (Path(tmp) / name for name in ("rusage.json", "stdout", "stderr"))
        with open(out, "w") as stdout, open(err, "w") as stderr:
            streams = dict(stdout=stdout, stderr=stderr) if capture else {}
            start = time.perf_counter()
            launcher = subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(report), *map(str, cmd)], env=env, **streams
            )
            wall = time.perf_counter() - start
        if not report.exists():
            raise RuntimeError(f"the measuring launcher failed (exit {launcher.returncode}): {err.read_text()[-2000:]}")
        usage = json.loads(report.read_text())
        text = {"stdout": out.read_text(), "stderr": err.read_text()} if capture else {}
    cpu = usage["user"] + usage["system"]
    return {
        "returncode": os.waitstatus_to_exitcode(usage["status"]),
        "process_wall_s": wall,
        "process_user_s": usage["user"],
        "process_system_s": usage["system"],
        "process_cpu_s": cpu,
        "cores_used": cpu / wall if wall > 0 else None,
        "process_max_rss_bytes": usage["maxrss"] * (1 if sys.platform == "darwin" else 1024),  # Linux: KiB
        "loadavg_before": load,
        **text,
    }


class RSSPoller:
    """Peak RSS over a code section by polling psutil every `interval` seconds.

    ru_maxrss only ever grows, so it cannot give the peak of one section of a process;
    this can (up to the polling interval). `peak` is None without psutil.

        with RSSPoller() as mem:
            work()
        mem.peak
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = None

    def _poll(self):
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            rss = proc.memory_info().rss
            self.peak = rss if self.peak is None else max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        try:
            import psutil  # noqa: F401
        except ImportError:
            return self
        self.peak = current_rss_bytes()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak or 0, current_rss_bytes() or 0)
        return False


# --- machine ----------------------------------------------------------------------------


def machine_info() -> dict:
    """What the numbers were measured on: CPU, cores, memory, load, library versions, devices."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }
    from jaxreg import machine

    cpu = machine.cpu_info()
    if cpu.get("model"):
        info["cpu"] = cpu["model"]
        info["cpu_family_model"] = [cpu["family"], cpu["model_number"]]
        info["simd"] = [f for f in ("avx2", "fma", "avx512f") if f in cpu["flags"]]
    info["xla_cpu"] = machine.describe()  # the instruction set XLA compiles for decides float32 results
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        pass
    try:
        import jax

        info["jax"] = jax.__version__
        info["backend"] = jax.default_backend()
        info["devices"] = [str(d) for d in jax.devices()]
    except Exception as e:  # pragma: no cover - informational only
        info["jax_error"] = repr(e)
    return info


def describe_machine(info: dict) -> str:
    load = info.get("loadavg_1_5_15")
    load_text = ", load avg " + "/".join(f"{x:.2f}" for x in load) if load else ""
    return (
        f"Machine: {info.get('cpu')} ({info.get('usable_cpus')} usable CPUs, SIMD {'+'.join(info.get('simd', [])) or '?'}, "
        f"{info.get('memory_gb', '?')} GB{load_text}); jax {info.get('jax')} on {info.get('backend')} "
        f"{info.get('devices')}; Python {info.get('python')}; {info.get('xla_cpu')}."
    )


# --- numbers and output -------------------------------------------------------------------


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec: str = ".2f", unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{unit}"


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.0f} MB"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | str | None, payload: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value)}")


class Stopwatch:
    """t = Stopwatch(); ...; t.lap() -> seconds since the previous lap (or creation)."""

    def __init__(self):
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


def log(*parts) -> None:
    """Progress to stderr, so stdout stays the report."""
    print(*parts, file=sys.stderr, flush=True)


def time_bucket(bucket, ds, settings, epochs: int) -> dict:
    """Build, initialize and train one bucket alone for `epochs` epochs, compiling afresh.

    Epoch times exclude building the epoch's batches on the host (timed apart). Returns
    construct_s, init_s, batch_prep_s, epoch_seconds, median_epoch_s (epochs 2..N),
    compile_overhead_s (first epoch - median) and peak_rss_bytes.
    """
    import gc

    import jax

    from jaxreg import variants as V

    jax.clear_caches()  # compile again, as a fresh process would
    gc.collect()
    with RSSPoller() as mem:
        t = Stopwatch()
        program = V.BucketProgram(bucket, ds, settings)
        product = program.config.product
        construct_s = t.lap()
        state, mask = program.init()
        jax.block_until_ready(state)
        init_s = t.lap()
        prep, times, cpu = [], [], []
        for e in range(epochs):
            t.lap()
            batches = program.train_batches(e)
            jax.block_until_ready(batches)
            prep.append(t.lap())
            cpu_start = time.process_time()
            state, metrics = program.epoch(state, mask, batches)
            jax.block_until_ready(metrics)
            times.append(t.lap())
            cpu.append(time.process_time() - cpu_start)
    med = median(times[1:] if len(times) > 1 else times)
    steady = slice(1, None) if len(times) > 1 else slice(None)
    del program, state, mask, batches, metrics
    gc.collect()
    return {
        "product": product,
        "construct_s": construct_s,
        "init_s": init_s,
        "batch_prep_s": median(prep),
        "epoch_seconds": times,
        "median_epoch_s": med,
        "epoch_cpu_seconds": cpu,
        "cores_used": sum(cpu[steady]) / sum(times[steady]),  # process CPU-s / wall over the steady epochs
        "compile_overhead_s": times[0] - med if len(times) > 1 else None,
        "peak_rss_bytes": mem.peak,
    }
