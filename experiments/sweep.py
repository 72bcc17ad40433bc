"""Run a whole study: python experiments/sweep.py [--preset book] [--seeds 3] [--epochs 20] ...

Parses flags, builds the preset's SweepConfig with the overrides and calls
jaxreg.sweep.run_sweep. Exit status: 0 done, 2 bad input (one line on stderr, nothing
written), 3 some variant diverged (a NaN or infinite metric, or a loss above
--divergence-threshold), 4 another process of a distributed run stopped (or did not come at start-up),
5 writing a run file failed (a full disk: one line naming the file; the folder is left "interrupted", for
--resume), 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (at any moment: a run folder this run has written is
left "interrupted", for --resume).
One of many processes (`--coordinator/--num-processes/--process-id`, or `--distributed` where
JAX detects the cluster): jax.distributed is initialized right after the imports, after the processes
have met in Python (jaxreg.rendezvous: a busy port, a missing peer or an unreachable coordinator is one
line, within --peer-timeout, and a signal ends the wait); process 0 writes the run folder. A failed process
of such a run ends with os._exit, so that it does not
wait in JAX's shutdown barrier for processes that wait for it.
The flags of the study's options are derived from SweepConfig's fields (jaxreg.cli), the
others are declared in RUN_OPTIONS and CLUSTER_OPTIONS below; a flag not given keeps the preset's value.
jax and jaxreg are imported before parsing (the parser needs SweepConfig), with the signal
handlers installed first and a signal during the imports waiting until they are done (jaxlib
segfaults when interrupted while its extension module initializes); importing starts no backend,
so --devices still sets XLA_FLAGS in time (without it, on CPU and in one process, one host device
per program up to the usable cores, set before jax's backends start).
`main(argv)` also runs in-process, as tests call it: it returns the exit status (a flag error
too: 2 with its one line on stderr; --help: 0), installs no signal handlers and does not choose
the host device count (both are only for the `__main__` program).
An interrupted process ends with os._exit once its messages are flushed: XLA's compiler
threads may still be running, and the interpreter's normal teardown can crash in them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import sys
import traceback

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PROCESS_LOST, EXIT_WRITE_FAILED = 2, 3, 4, 5
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: as a shell reports them

# The options that are not SweepConfig fields (those are derived from its declaration, see jaxreg.cli):
# (flag, argparse settings); a help's {presets} and {heartbeat} are filled in by build_parser.
RUN_OPTIONS = (
    (
        "--preset",
        dict(
            default="book",
            metavar="NAME|FILE",
            help="study to run: {presets} (default: book, the seven models of the book), or the path of a config .py "
            "file defining get_config()",
        ),
    ),
    ("--variants", dict(help="comma-separated subset of the preset's variants, e.g. original,l2")),
    (
        "--out",
        dict(
            help="run folder, used exactly as given (default: a new runs/<preset>/<YYYY-MM-DD_HH-MM-SS> folder, local "
            "time, -2, -3, ... appended when taken; runs/<preset>/LATEST then names it)",
        ),
    ),
    (
        "--resume",
        dict(
            action="store_true",
            help="continue an interrupted run in --out (same options); without --out, the run runs/<preset>/LATEST "
            "names",
        ),
    ),
    ("--overwrite", dict(action="store_true", help="replace a finished or unfinished run in --out")),
    (
        "--keep-checkpoint",
        dict(
            action="store_true",
            help="keep the resume checkpoint (every model's weights and optimizer state) once the run has finished "
            "(default: deleted then)",
        ),
    ),
    (
        "--checkpoint-seconds",
        dict(
            type=float,
            metavar="S",
            help="save the resume checkpoint once S seconds have passed since the last one (default {checkpoint}; 0: after "
            "every epoch); the end of the run and Ctrl-C or SIGTERM save too, so --resume loses no finished epoch",
        ),
    ),
    (
        "--memory-limit",
        dict(
            metavar="SIZE",
            help="the most memory the whole process may use, e.g. 4GB, 4096MB or bytes: a run whose estimate does not "
            "fit (less what the process holds before training) trains in waves of variants and seeds that do, one "
            "after the other (default: the devices' free memory)",
        ),
    ),
    (
        "--plan",
        dict(
            action="store_true",
            help="print the plan (programs, devices, waves) and its memory estimate per wave and program, then exit "
            "without training or writing anything",
        ),
    ),
    ("--no-figures", dict(action="store_true", help="skip the PNG figures")),
    ("--no-progress", dict(action="store_true", help="no progress bar")),
    ("--no-tensorboard", dict(action="store_true", help="skip the TensorBoard event files (tensorboard/)")),
    (
        "--no-compile-cache",
        dict(
            action="store_true",
            help="do not keep compiled XLA computations in ~/.cache/jaxreg/xla (or $XDG_CACHE_HOME/jaxreg/xla) for the next "
            "run; env JAXREG_COMPILE_CACHE=0 does the same",
        ),
    ),
)
CLUSTER_OPTIONS = (
    ("--coordinator", dict(metavar="HOST:PORT", help="process 0's address and a free port (with the next two)")),
    ("--num-processes", dict(type=int, metavar="N", help="how many processes take part")),
    ("--process-id", dict(type=int, metavar="I", help="this process's number, 0..N-1 (0 writes)")),
    (
        "--distributed",
        dict(
            action="store_true",
            help="call jax.distributed.initialize() without arguments: JAX detects the processes (SLURM, Open MPI, TPU VMs)",
        ),
    ),
    (
        "--heartbeat-timeout",
        dict(
            type=int,
            metavar="SECONDS",
            help="a process silent this long is declared dead and the others stop (default {heartbeat})",
        ),
    ),
    (
        "--peer-timeout",
        dict(
            type=int,
            metavar="SECONDS",
            help="at start-up, how long the processes wait for each other (process 0 for all the others, the others to reach "
            "process 0) before each stops with one line (default {peer_timeout})",
        ),
    ),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"sweep.py: error: {message} (see --help)\n")


def _presets():
    """experiments/presets, the one home of the preset names and files (imports jaxreg.config, hence jax)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import presets

    return presets


def build_parser() -> argparse.ArgumentParser:
    """The command line: RUN_OPTIONS, SweepConfig's option fields (jaxreg.cli), CLUSTER_OPTIONS."""
    from jaxreg import cli, distributed
    from jaxreg.sweep import DEFAULT_CHECKPOINT_SECONDS

    p = _Parser(
        prog="sweep.py",
        description="Train a whole overfitting/underfitting study (every variant x seed in one vmapped program) "
        "into a run folder: config.json, history.jsonl/.csv and tensorboard/ (after every epoch), summary.md/.csv, "
        "figures/*.png, params/ (each variant's final and best-epoch parameters), checkpoint/ (while it runs).",
        epilog="Exit status: 0 done, 2 bad input, 3 some variant diverged (NaN/inf, or a loss above "
        "--divergence-threshold), 4 another process of a distributed run stopped or did not come, 5 writing a run "
        "file failed (e.g. a full disk), 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM; an interrupted "
        "run continues with --resume.",
    )
    filled = {
        "presets": ", ".join(_presets().PRESETS),
        "heartbeat": distributed.DEFAULT_HEARTBEAT_TIMEOUT,
        "peer_timeout": distributed.DEFAULT_PEER_TIMEOUT,
        "checkpoint": DEFAULT_CHECKPOINT_SECONDS,
    }
    for flag, settings in RUN_OPTIONS:
        p.add_argument(flag, **{**settings, "help": settings["help"].format(**filled)})
    cli.add_config_options(
        p.add_argument_group(
            "study options",
            "the fields of the preset's SweepConfig; a flag not given keeps the preset's value "
            "(the default shown is SweepConfig's, which a preset may change)",
        )
    )
    many = p.add_argument_group(
        "many processes and hosts",
        "every process runs the same command and reads the data itself; the variants are sharded over all "
        "processes' devices; process 0 writes --out (give the same --out to all)",
    )
    for flag, settings in CLUSTER_OPTIONS:
        many.add_argument(flag, **{**settings, "help": settings["help"].format(**filled)})
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags; a bad flag or combination exits 2 with one line (SystemExit)."""
    p = build_parser()
    args = p.parse_args(argv)
    trio = {"--coordinator": args.coordinator, "--num-processes": args.num_processes, "--process-id": args.process_id}
    given = [k for k, v in trio.items() if v is not None]
    if given and len(given) < 3:
        p.error(f"{', '.join(given)} needs {', '.join(k for k in trio if k not in given)} too (all three or none)")
    if (given or args.distributed) and not args.out:
        p.error("with many processes pass --out, the same folder for all (process 0 writes it)")
    if given and args.distributed:
        p.error("--distributed detects the processes itself: leave out --coordinator, --num-processes and --process-id")
    if args.plan and (given or args.distributed):
        p.error("--plan shows one process's plan: leave out the options of many processes")
    if args.memory_limit is not None:
        from jaxreg.memory import parse_size

        try:
            args.memory_limit = parse_size(args.memory_limit)
        except ValueError as e:
            p.error(f"argument --memory-limit: {e}")
    for flag, value in (("--heartbeat-timeout", args.heartbeat_timeout), ("--peer-timeout", args.peer_timeout)):
        if value is not None and not (given or args.distributed):
            p.error(f"{flag} is for many processes: add --distributed or --coordinator ...")
    return args


class Interrupts:
    """SIGINT (Ctrl-C) and SIGTERM both as KeyboardInterrupt, so that both take run_sweep's orderly path.

    install() is for the whole command-line process, before jax is imported. The first signal
    raises KeyboardInterrupt in the main thread and is remembered for the exit status; later
    ones are ignored, so that writing status.json and the messages cannot be cut short (a
    hung process still ends with SIGKILL). Should the interrupt land in a __del__ or another
    callback, Python drops it ("Exception ignored", via sys.unraisablehook): then the next
    signal interrupts again, and one line asks for it instead of the traceback. A signal
    ignored on entry (SIGINT of a background job) stays ignored. Without install() (main()
    called in-process) Python's defaults apply.
    """

    def __init__(self):
        self.received: int | None = None

    def install(self) -> Interrupts:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, self._handle)
        sys.unraisablehook = self._unraisable
        return self

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def _unraisable(self, unraisable) -> None:
        if self.received is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
            name, self.received = signal.Signals(self.received).name, None
            print(
                f"\nsweep.py: {name} came during cleanup code and was lost ({unraisable.object!r}); send it again",
                file=sys.stderr,
            )
        else:
            sys.__unraisablehook__(unraisable)

    def exit_status(self) -> int:
        return EXIT_TERMINATED if self.received == signal.SIGTERM else EXIT_INTERRUPTED


INTERRUPTS = Interrupts()


COMMAND_LINE = False  # set when run as a program: only then may it choose the host device count


def _default_host_devices(config) -> None:
    """Without --devices, when programs are spread (the default on CPU): one host device per program, up to
    the usable cores, so that the programs train at the same time. Only the CPU platform is affected; an
    XLA_FLAGS that already sets a count wins. Only for the command-line program (main() called in a process
    that may start jax later, a test's, keeps its devices). Must run before jax initializes its backends."""
    if (
        not COMMAND_LINE
        or config.devices is not None
        or config.placement == "shard"
        or "--xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    ):
        return
    from jaxreg.variants import plan

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(len(plan(config.variant_specs())), cores)
    if n > 1:
        _force_host_devices(n)


def _force_host_devices(n: int) -> None:
    """Ask XLA for n CPU devices; must happen before jax initializes its backends."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def build_config(args):
    """The preset's SweepConfig with the command-line overrides applied (a flag not given keeps the preset's value)."""
    from jaxreg import cli

    config = _presets().load(args.preset)
    if args.variants is not None:
        config = config.select([n.strip() for n in args.variants.split(",") if n.strip()])
    return config.replace(**cli.config_changes(args))


def _resume_hint(argv, out=None) -> str:
    """The command that resumes this run; `out`: the default folder this run got (without --out)."""
    args = [a for a in argv if a != "--overwrite"] + ([] if out is None else ["--out", str(out)])
    return shlex.join(["python", "experiments/sweep.py", *args, *([] if "--resume" in args else ["--resume"])])


def main(argv=None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) in this process; the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before run_sweep took charge of a run folder, or after it returned
        print(
            f"\n{_signal_prefix()}interrupted; to continue from the last checkpoint, if any: {_resume_hint(argv)}",
            file=sys.stderr,
        )
        return INTERRUPTS.exit_status()


def _import_jaxreg() -> None:
    """Import jax and jaxreg (the parser needs SweepConfig), with SIGINT and SIGTERM held until done: a
    signal handled while jaxlib's extension module initializes crashes it (segfault). Importing
    starts no backend: XLA_FLAGS set afterwards (--devices) still count."""
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import jaxreg.sweep  # noqa: F401  (all that a run needs)
        from jaxreg import cli, outfolders  # noqa: F401

        _presets()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


def _start_cluster(args) -> tuple[str, int] | None:
    """Start jax.distributed when the flags ask for many processes (before anything asks jax for its devices);
    (the error message, the exit status) when it cannot start: EXIT_PROCESS_LOST when a process did not come in
    time, EXIT_BAD_INPUT otherwise. A signal while waiting for the other processes ends the wait (KeyboardInterrupt)."""
    from jaxreg import distributed

    timeouts = {"heartbeat_timeout": args.heartbeat_timeout, "peer_timeout": args.peer_timeout}
    try:
        cluster = distributed.Cluster(
            args.coordinator,
            args.num_processes,
            args.process_id,
            auto=args.distributed,
            **{k: v for k, v in timeouts.items() if v is not None},
        )
        distributed.initialize(cluster)
    except distributed.PeersMissing as e:
        return str(e), EXIT_PROCESS_LOST
    except distributed.DistributedError as e:
        return str(e), EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            f"\n{_signal_prefix()}interrupted while waiting for the other processes; nothing was written",
            file=sys.stderr,
        )
        return None, INTERRUPTS.exit_status()
    return None


def _main(argv: list) -> int:
    _import_jaxreg()
    try:
        args = parse_args(argv)
    except SystemExit as e:  # a flag error (2) or --help (0): argparse has printed it
        return e.code
    if args.devices is not None and args.devices >= 1:
        _force_host_devices(args.devices)
    from jaxreg import outfolders
    from jaxreg.cache import enable_compilation_cache
    from jaxreg.sweep import ProcessLost, SweepError, SweepInterrupted, WriteFailed, run_sweep
    from jaxreg.variants import VariantError

    problem = _start_cluster(args)
    if problem is not None:
        message, status = problem
        if message is not None:
            print(f"sweep.py: error: {message}", file=sys.stderr)
        return status
    if not args.no_compile_cache:
        enable_compilation_cache()

    fresh = None  # (base, previous latest, folder) when this run made a new default folder
    try:
        config = build_config(args)
        if args.coordinator is None and not args.distributed:  # many processes shard over their own devices
            _default_host_devices(config)
        if args.plan:  # before any folder is made: --plan writes nothing
            from jaxreg.sweep import plan_sweep

            plan_sweep(config, args.memory_limit, stream=sys.stdout)
            return 0
        out, fresh = _output_folder(args, config, outfolders)
        result = run_sweep(
            config,
            out,
            resume=args.resume,
            overwrite=args.overwrite,
            figures=not args.no_figures,
            progress=not args.no_progress,
            tensorboard=not args.no_tensorboard,
            **({} if args.checkpoint_seconds is None else {"checkpoint_seconds": args.checkpoint_seconds}),
            keep_checkpoint=args.keep_checkpoint,
            memory_limit=args.memory_limit,
            stream=sys.stdout,  # today's, not the one run_sweep's default captured at import
        )
    except SweepInterrupted as e:
        print(f"\n{_signal_prefix()}{e}", file=sys.stderr)
        print(f"resume with: {_resume_hint(argv, fresh and fresh[2])}", file=sys.stderr)
        return INTERRUPTS.exit_status()
    except ProcessLost as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return EXIT_PROCESS_LOST
    except WriteFailed as e:
        print(f"sweep.py: error: {e}: {_resume_hint(argv, fresh and fresh[2])}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except (SweepError, VariantError) as e:
        if fresh is not None:
            _drop_if_empty(*fresh, outfolders)
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not _many_processes():  # one process: it wrote the folder
        _print_exact_zeros(result.folder)
    if result.diverged:
        which = ", ".join(f"{name} (seed {seed}, epoch {epoch})" for name, seed, epoch in result.diverged)
        why = f"NaN, infinite or a loss above {config.divergence_threshold:g}"
        print(f"sweep.py: diverged ({why}): {which}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def _print_exact_zeros(folder) -> None:
    """With a proximal L1 variant, each variant's fraction of exact zeros in its hidden kernels (final parameters)."""
    from jaxreg.config import SweepError
    from jaxreg.params import exact_zero_fractions, exact_zeros_table, has_proximal_l1

    if has_proximal_l1(folder):
        try:
            print("\n" + exact_zeros_table(exact_zero_fractions(folder)))
        except SweepError as e:  # a finished folder of an older jaxreg, which saved no parameters
            print(f"\nno exact-zero count: {e}")


def _output_folder(args, config, outfolders):
    """(run folder, (base, previous latest, folder) or None): --out as given; else the run runs/<preset>/LATEST
    names with --resume, or a new timestamped folder under runs/<preset> that LATEST then names."""
    if args.out is not None:  # an empty --out is refused by run_sweep, not taken for "no --out"
        return args.out, None
    base = os.path.join("runs", config.name)
    if args.resume:
        return outfolders.latest_folder(base), None
    try:
        previous = outfolders.latest_folder(base)
    except outfolders.SweepError:  # no earlier run
        previous = None
    folder = outfolders.new_folder(base)
    outfolders.point_latest(base, folder)
    return folder, (base, previous, folder)


def _drop_if_empty(base, previous, folder, outfolders) -> None:
    """Undo a new default folder the run refused before writing into it, and point latest back."""
    try:
        folder.rmdir()  # only when still empty
    except OSError:
        return
    with contextlib.suppress(outfolders.SweepError):
        outfolders.restore_latest(base, previous)


def _many_processes() -> bool:
    """Whether this process is one of a distributed run (jax already imported and initialized for it)."""
    if "jax" not in sys.modules:
        return False
    import jax

    return jax.distributed.is_initialized()


def _signal_prefix() -> str:
    return "SIGTERM: " if INTERRUPTS.received == signal.SIGTERM else ""


if __name__ == "__main__":
    COMMAND_LINE = True
    try:  # install() inside: a signal right after it, before main's own try, is caught here
        INTERRUPTS.install()
        status = main()
    except KeyboardInterrupt:
        print(f"\n{_signal_prefix()}interrupted before anything was written", file=sys.stderr)
        status = INTERRUPTS.exit_status()
    except Exception:
        if not _many_processes():
            raise
        traceback.print_exc()  # then out without the shutdown barrier, like any failure of many processes
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # e.g. a closed pipe
            stream.flush()
    if status in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        os._exit(status)  # skip the teardown: it can segfault in XLA compiler threads still running
    if status not in (0, EXIT_DIVERGED) and _many_processes():
        os._exit(status)  # skip jax.distributed's shutdown barrier: the other processes may never reach it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: a late signal must not interrupt the exit
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
