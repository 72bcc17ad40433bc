"""jaxreg against Keras 3 on the study's seven models (Deep Learning with Python, 4.4).

What it measures. The same seven models (original 16,16; smaller 6,6; bigger 1024,1024;
l2 0.001; l1 0.0001; l1_l2 0.0001+0.0001; dropout 0.5) trained on the same encoded IMDB
data (jaxreg's load_imdb: same vocabulary and multi-hot rows), 20 epochs, batch 512
(49 batches per epoch, the last one of 424 reviews), RMSprop(lr 1e-3, rho 0.9, eps 1e-7),
binary cross-entropy, validation on the test set after every epoch:

* Keras 3 (JAX backend): one model after the other, model.fit(x, y, epochs, batch_size=512,
  validation_data=(x_test, y_test), shuffle=True) on the dense float32 multi-hot matrices
  from jaxreg.data.densify (the book's vectorize_sequences makes float64; --keras-dtype
  float64 does that, at twice the memory).
* jaxreg: all models at once with variants.run(RunSettings(loss="keras")), which trains
  them as buckets (one compiled, vmapped program per bucket); optimizer "keras3" by
  default (Keras 3's eps placement, g / sqrt(a + eps)), "keras2" on request. Then, to
  break the time down, each bucket alone through variants.BucketProgram for a few epochs.

Each framework runs in its own subprocess (peak RSS is then that framework's alone),
back to back. Reported per model and in total: wall time, seconds per epoch (median over
epochs), the overhead (wall time minus epochs x median epoch: compilation, first-epoch
work, setup), peak memory, and the best validation loss with its epoch for each framework.
Batches have the same size and count, but each framework shuffles with its own RNG, so the
losses agree only within seed noise.

Run (from the repository root, venv active, `pip install -e ".[bench]"`):

    python benchmarks/vs_keras.py                           # full: 7 models, 20 epochs
    python benchmarks/vs_keras.py --epochs 2 --models original,l2 --json /tmp/vs_keras.json
    python benchmarks/vs_keras.py --frameworks jaxreg --jaxreg-product sparse

The report (Markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

FRAMEWORKS = ("book", "jaxreg", "keras")
BATCH_SIZE = 512
REPO = Path(__file__).resolve().parent.parent


def epoch_summary(epoch_seconds: list[float], wall: float) -> dict:
    """Median epoch (over all epochs but the first, if there are several) and overhead = wall - epochs x median."""
    steady = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
    med = C.median(steady)
    return {
        "epoch_seconds": epoch_seconds,
        "median_epoch_s": med,
        "first_epoch_s": epoch_seconds[0] if epoch_seconds else None,
        "wall_s": wall,
        "overhead_s": None if med is None else wall - med * len(epoch_seconds),
    }


def best_val(val_loss) -> dict:
    val_loss = [float(v) for v in val_loss]
    i = min(range(len(val_loss)), key=val_loss.__getitem__)
    return {"best_val_loss": val_loss[i], "best_epoch": i + 1}


# --- Keras child ------------------------------------------------------------------------------


def keras_child(args) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    watch = C.Stopwatch()
    import keras
    import numpy as np

    from jaxreg.data import densify

    if keras.backend.backend() != "jax":
        raise SystemExit(f"Keras runs on {keras.backend.backend()!r}; set KERAS_BACKEND=jax")
    import_s = watch.lap()
    ds = C.load_dataset(args)
    load_s = watch.lap()
    dtype = np.dtype(args.keras_dtype)
    x_train, x_val = densify(ds.train.x, dtype), densify(ds.validation.x, dtype)
    y_train, y_val = ds.train.y.astype(dtype), ds.validation.y.astype(dtype)
    densify_s = watch.lap()
    C.log(
        f"[keras] import {import_s:.1f} s, data {load_s:.1f} s, densify {densify_s:.1f} s "
        f"({(x_train.nbytes + x_val.nbytes) / 1e9:.2f} GB {dtype.name})"
    )

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds, self.train_begin = [], time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # after validation
            self.seconds.append(time.perf_counter() - self.start)

    def build(name):
        widths, l1, l2, rate = C.model_settings(name)
        reg = (
            keras.regularizers.L1L2(l1=l1, l2=l2)
            if l1 and l2
            else keras.regularizers.L1(l1)
            if l1
            else keras.regularizers.L2(l2)
            if l2
            else None
        )
        layers = [keras.Input((ds.num_words,), dtype=dtype.name)]
        for w in widths:
            layers.append(keras.layers.Dense(w, activation="relu", kernel_regularizer=reg))
            if rate:
                layers.append(keras.layers.Dropout(rate))
        layers.append(keras.layers.Dense(1, activation="sigmoid"))
        model = keras.Sequential(layers, name=name)
        model.compile(
            optimizer=keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-7),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
        return model

    models = {}
    for name in args.models:
        keras.utils.set_random_seed(args.seed)
        timer = EpochTimer()
        with C.RSSPoller() as mem:
            start = time.perf_counter()
            model = build(name)
            built = time.perf_counter()
            hist = model.fit(
                x_train,
                y_train,
                epochs=args.epochs,
                batch_size=BATCH_SIZE,
                validation_data=(x_val, y_val),
                shuffle=True,
                verbose=0,
                callbacks=[timer],
            )
            end = time.perf_counter()
        h = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
        models[name] = {
            **epoch_summary(timer.seconds, end - start),
            "build_compile_s": built - start,
            "fit_setup_s": timer.train_begin - built,
            "peak_rss_bytes": mem.peak,
            **best_val(h["val_loss"]),
            "history": h,
        }
        C.log(
            f"[keras] {name}: {end - start:.1f} s, epochs {[round(s, 2) for s in timer.seconds]}, "
            f"best val_loss {models[name]['best_val_loss']:.4f} @ {models[name]['best_epoch']}"
        )
        del model, hist
        keras.backend.clear_session()
        gc.collect()
    train_s = sum(m["wall_s"] for m in models.values())
    return {
        "framework": "keras",
        "version": keras.__version__,
        "backend": keras.backend.backend(),
        "input_dtype": dtype.name,
        "import_s": import_s,
        "data_load_s": load_s,
        "densify_s": densify_s,
        "input_bytes": int(x_train.nbytes + x_val.nbytes),
        "train_wall_s": train_s,
        "median_epoch_all_models_s": sum(m["median_epoch_s"] or 0.0 for m in models.values()),
        "process_peak_rss_bytes": C.ru_maxrss_bytes(),
        "models": models,
        "machine": C.machine_info(),
    }


# --- jaxreg child ------------------------------------------------------------------------------


def jaxreg_child(args) -> dict:
    watch = C.Stopwatch()
    import jax

    from jaxreg import variants as V

    import_s = watch.lap()
    ds = C.load_dataset(args)
    load_s = watch.lap()
    specs = C.study_variants(args.models, optimizer=args.jaxreg_optimizer, seed=args.seed)
    settings = V.RunSettings(epochs=args.epochs, batch_size=BATCH_SIZE, loss="keras", product=args.jaxreg_product)
    buckets = V.plan(specs)

    stamps = []
    with C.RSSPoller() as mem:
        start = time.perf_counter()
        history = V.run(
            specs, ds, settings, on_epoch=lambda epoch, row, snapshot: stamps.append(time.perf_counter())
        ).history
        end = time.perf_counter()
    run_process_peak = C.ru_maxrss_bytes()
    epoch_seconds = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    run_summary = epoch_summary(epoch_seconds, end - start)
    C.log(
        f"[jaxreg] run: {end - start:.1f} s, epochs {[round(s, 2) for s in epoch_seconds]} "
        "(epoch 1 includes building, initializing and compiling every bucket)"
    )

    def bucket_name(b):
        return "x".join(map(str, b.widths)) + f" [{', '.join(c.name for c in b.configs)}]"

    profiles = []
    for b in buckets if args.bucket_epochs > 0 else []:
        timing = C.time_bucket(b, ds, settings, min(args.bucket_epochs, args.epochs))
        epochs = timing["epoch_seconds"]
        profiles.append(
            {
                "bucket": bucket_name(b),
                "widths": list(b.widths),
                "configs": [c.name for c in b.configs],
                "seeds": list(b.seeds),
                "product": timing["product"],
                "construct_s": timing["construct_s"],
                "init_s": timing["init_s"],
                "batch_prep_s": timing["batch_prep_s"],
                "epoch_seconds": epochs,
                "median_epoch_s": timing["median_epoch_s"],
                "first_epoch_s": epochs[0],
                "compile_overhead_s": timing["compile_overhead_s"],
                "cores_used": timing["cores_used"],
                "peak_rss_bytes": timing["peak_rss_bytes"],
            }
        )
        C.log(
            f"[jaxreg] bucket {bucket_name(b)}: epochs {[round(s, 2) for s in epochs]}, batch prep {timing['batch_prep_s']:.2f} s"
        )

    in_bucket = {c.name: bucket_name(b) for b in buckets for c in b.configs}
    by_bucket = {p["bucket"]: p for p in profiles}
    models = {}
    for spec in specs:
        h = {k: v.tolist() for k, v in history[(spec.name, spec.seed)].items()}
        profile = by_bucket.get(in_bucket[spec.name], {})
        models[spec.name] = {
            "bucket": in_bucket[spec.name],
            "bucket_median_epoch_s": profile.get("median_epoch_s"),
            "bucket_compile_overhead_s": profile.get("compile_overhead_s"),
            "bucket_peak_rss_bytes": profile.get("peak_rss_bytes"),
            **best_val(h["val_loss"]),
            "history": h,
        }
    return {
        "framework": "jaxreg",
        "optimizer": args.jaxreg_optimizer,
        "product": args.jaxreg_product,
        "jax_version": jax.__version__,
        "import_s": import_s,
        "data_load_s": load_s,
        "train_wall_s": end - start,
        "run": run_summary,
        "run_peak_rss_bytes": mem.peak,
        "run_process_peak_rss_bytes": run_process_peak,
        "process_peak_rss_bytes": C.ru_maxrss_bytes(),
        "buckets": profiles,
        "models": models,
        "machine": C.machine_info(),
        "data": ds.describe(),
    }


# --- parent: launch children, report -----------------------------------------------------------


def launch(framework: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            framework,
            "--child-out",
            str(out),
            "--epochs",
            str(args.epochs),
            "--models",
            ",".join(args.models),
            "--data",
            str(args.data),
            "--seed",
            str(args.seed),
            "--jaxreg-product",
            args.jaxreg_product,
            "--jaxreg-optimizer",
            args.jaxreg_optimizer,
            "--keras-dtype",
            args.keras_dtype,
            "--bucket-epochs",
            str(args.bucket_epochs),
        ]
        if args.cache_dir is not None:
            cmd += ["--cache-dir", str(args.cache_dir)]
        env = dict(os.environ, KERAS_BACKEND="jax")
        usage = C.measured_process(cmd, env)
        if usage["returncode"] != 0 or not out.exists():
            return {"framework": framework, "error": f"child exited with status {usage['returncode']}", **usage}
        result = json.loads(out.read_text())
    result.update(usage)
    return result


def launch_book(args) -> dict:
    """The whole study command, experiments/sweep.py --preset book, as a user runs it (its own process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable,
            str(REPO / "experiments" / "sweep.py"),
            "--preset",
            "book",
            "--data",
            str(args.data),
            "--out",
            str(out),
            "--no-progress",
            "--epochs",
            str(args.epochs),
            *args.book_args.split(),
        ]
        if args.models != list(C.STUDY_MODELS):
            cmd += ["--variants", ",".join(args.models)]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} if not args.keep_xla_flags else dict(os.environ)
        if args.cache_dir is not None:
            env["JAXREG_CACHE"] = str(args.cache_dir)
        usage = C.measured_process(cmd, env, capture=True)
        result = {"framework": "book", "command": " ".join(cmd[1:]), **usage}
        if usage["returncode"] != 0:
            result["error"] = f"experiments/sweep.py exited with status {usage['returncode']}"
            return result
        status = json.loads((out / "status.json").read_text())
        config = json.loads((out / "config.json").read_text())
        result.update(
            train_wall_s=status["seconds"],
            compile_s=status.get("compile_seconds"),
            devices=config["devices"],
            plan=[
                {k: b.get(k) for k in ("widths", "variants", "devices", "product", "variant_loop")}
                for b in config["plan"]
            ],
            machine=C.machine_info(),
        )
    return result


def aggregate(results: list[dict], path) -> float | None:
    """Median over repeats of the value at `path` (a tuple of keys) in each result."""
    values = []
    for r in results:
        v = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        values.append(v)
    return C.median(values)


def report(args, runs: dict[str, list[dict]]) -> str:
    ok = {fw: [r for r in rs if "error" not in r] for fw, rs in runs.items()}
    k, j, b = ok.get("keras", []), ok.get("jaxreg", []), ok.get("book", [])
    lines = []
    first = (b or j or k or [{}])[0]
    if first.get("machine"):
        lines.append(C.describe_machine(first["machine"]))
    if j:
        lines.append(j[0]["data"])
    lines.append(
        f"Settings: {len(args.models)} model(s), {args.epochs} epochs, batch {BATCH_SIZE}, RMSprop(1e-3, rho 0.9, eps 1e-7), "
        f"seed {args.seed}, {args.repeats} repeat(s); times are medians over repeats."
    )
    lines.append(
        f"Keras {k[0]['version'] if k else '?'} (JAX backend) trains on dense {args.keras_dtype} multi-hot matrices "
        "(the book used float64), models one after the other, RMSprop eps in the sqrt (Keras 3). "
        f"jaxreg trains sparse batches, all models at once in buckets, optimizer {args.jaxreg_optimizer!r} "
        f"({'same eps placement as Keras 3' if args.jaxreg_optimizer == 'keras3' else 'Keras 2.3 eps placement'}), "
        f"loss 'keras' (clipped), first-layer product {args.jaxreg_product!r}. Same batch size and count; each "
        "framework shuffles with its own RNG, so losses agree within seed noise only."
    )
    if b:
        lines.append(
            "The book command trains the preset as it is: its RMSprop is Keras 2.3's (eps outside the root; the same "
            "work as Keras 3's), loss 'keras', product 'auto', batches and validation as above."
        )
    for fw, rs in runs.items():
        for r in rs:
            if "error" in r:
                lines.append(f"**{fw} failed**: {r['error']}")
    lines += whole_processes(args, ok)

    rows = []
    for name in args.models:
        kr = [r["models"][name] for r in k if name in r["models"]]
        jr = [r["models"][name] for r in j if name in r["models"]]
        row = [name]
        if kr:
            row += [
                C.fmt(C.median(m["wall_s"] for m in kr), ".1f"),
                C.fmt(C.median(m["median_epoch_s"] for m in kr), ".2f"),
                C.fmt(C.median(m["overhead_s"] for m in kr), ".1f"),
                C.fmt_bytes(C.median(m["peak_rss_bytes"] for m in kr)),
                f"{kr[0]['best_val_loss']:.4f} @ {kr[0]['best_epoch']}",
            ]
        else:
            row += ["-"] * 5
        if jr:
            row += [
                jr[0]["bucket"],
                C.fmt(C.median(m["bucket_median_epoch_s"] for m in jr), ".2f"),
                C.fmt(C.median(m["bucket_compile_overhead_s"] for m in jr), ".1f"),
                C.fmt_bytes(C.median(m["bucket_peak_rss_bytes"] for m in jr)),
                f"{jr[0]['best_val_loss']:.4f} @ {jr[0]['best_epoch']}",
            ]
        else:
            row += ["-"] * 5
        if kr and jr:
            row.append(f"{jr[0]['best_val_loss'] - kr[0]['best_val_loss']:+.4f}")
        else:
            row.append("-")
        rows.append(row)
    lines.append("\n### Per model\n")
    lines.append(
        C.markdown_table(
            [
                "model",
                "Keras wall s",
                "Keras s/epoch",
                "Keras overhead s",
                "Keras peak RSS",
                "Keras best val_loss @ epoch",
                "jaxreg bucket (trained together)",
                "jaxreg bucket s/epoch",
                "jaxreg bucket compile s",
                "jaxreg bucket peak RSS",
                "jaxreg best val_loss @ epoch",
                "best val_loss jaxreg - Keras",
            ],
            rows,
        )
    )
    lines.append(
        "\nKeras wall: build + compile + fit (incl. validation) of that model; s/epoch: median over epochs 2..N "
        "(training + validation); overhead: wall - epochs x s/epoch (compilation, first epoch, setup); peak RSS: the "
        "child process while fitting that model (includes the dense matrices). jaxreg bucket s/epoch: one bucket's "
        "epoch alone (BucketProgram, median of epochs 2..), shared by all models of the bucket; compile s: its first "
        "epoch minus that median; peak RSS: the jaxreg process while profiling that bucket. "
        "val_loss includes the weight penalty for l1/l2/l1_l2, in both frameworks."
    )

    total_rows = []
    if k:
        total_rows.append(
            [
                "Keras (one model after the other)",
                C.fmt(aggregate(k, ("train_wall_s",)), ".1f"),
                C.fmt(aggregate(k, ("median_epoch_all_models_s",)), ".2f"),
                C.fmt(C.median(r["train_wall_s"] - args.epochs * r["median_epoch_all_models_s"] for r in k), ".1f"),
                C.fmt_bytes(aggregate(k, ("process_peak_rss_bytes",))),
                f"import {aggregate(k, ('import_s',)):.1f} s, data {aggregate(k, ('data_load_s',)):.1f} s, "
                f"densify {aggregate(k, ('densify_s',)):.1f} s ({C.fmt_bytes(k[0]['input_bytes'])})",
                C.fmt(aggregate(k, ("process_wall_s",)), ".1f"),
            ]
        )
    if j:
        total_rows.append(
            [
                "jaxreg (variants.run, all buckets at once)",
                C.fmt(aggregate(j, ("run", "wall_s")), ".1f"),
                C.fmt(aggregate(j, ("run", "median_epoch_s")), ".2f"),
                C.fmt(aggregate(j, ("run", "overhead_s")), ".1f"),
                C.fmt_bytes(aggregate(j, ("run_process_peak_rss_bytes",))),
                f"import {aggregate(j, ('import_s',)):.1f} s, data {aggregate(j, ('data_load_s',)):.1f} s",
                C.fmt(aggregate(j, ("process_wall_s",)), ".1f"),
            ]
        )
    lines.append("\n### Total (all selected models)\n")
    lines.append(
        C.markdown_table(
            [
                "framework",
                "training wall s",
                "s/epoch (all models)",
                "overhead s",
                "peak RSS (process)",
                "process setup",
                "whole subprocess s",
            ],
            total_rows,
        )
    )
    if k and j:
        kw, jw = aggregate(k, ("train_wall_s",)), aggregate(j, ("run", "wall_s"))
        ke, je = aggregate(k, ("median_epoch_all_models_s",)), aggregate(j, ("run", "median_epoch_s"))
        km, jm = aggregate(k, ("process_peak_rss_bytes",)), aggregate(j, ("run_process_peak_rss_bytes",))
        lines.append(
            f"\nSpeed-up of jaxreg over Keras: {kw / jw:.1f}x in training wall time, {ke / je:.1f}x per epoch "
            f"(steady state); memory {km / jm:.1f}x less."
        )
    lines.append(
        "\nKeras s/epoch (all models) is the sum of the models' median epochs. jaxreg's training wall is variants.run "
        "from the call to its return, s/epoch the median time between its on_epoch callbacks (epochs 2..N), "
        "its peak RSS the process peak at the end of run (before the per-bucket profile)."
    )

    if j and j[0]["buckets"]:
        brows = []
        for i, b in enumerate(j[0]["buckets"]):
            med = lambda key: C.median(r["buckets"][i][key] for r in j)  # noqa: E731
            brows.append(
                [
                    b["bucket"],
                    b["product"],
                    C.fmt(med("construct_s"), ".2f"),
                    C.fmt(med("init_s"), ".2f"),
                    C.fmt(med("batch_prep_s"), ".3f"),
                    C.fmt(med("first_epoch_s"), ".2f"),
                    C.fmt(med("median_epoch_s"), ".2f"),
                    C.fmt(med("compile_overhead_s"), ".2f"),
                    C.fmt(med("cores_used"), ".2f"),
                    C.fmt_bytes(med("peak_rss_bytes")),
                ]
            )
        lines.append(f"\n### jaxreg buckets, each alone ({min(args.bucket_epochs, args.epochs)} epochs)\n")
        lines.append(
            C.markdown_table(
                [
                    "bucket",
                    "first-layer product",
                    "BucketProgram() s",
                    "init s",
                    "train_batches s/epoch (host)",
                    "first epoch s",
                    "median epoch s",
                    "compile overhead s",
                    "cores used (epochs 2..)",
                    "peak RSS",
                ],
                brows,
            )
        )
        lines.append(
            "\nEpoch = the compiled training scan over 49 batches plus validation on 25,000 reviews, after "
            "train_batches() has built and transferred the epoch's sparse batches (timed apart; variants.run overlaps "
            "it with the previous epoch's compute)."
        )
    return "\n".join(lines)


PROCESS_NAMES = {
    "book": "jaxreg, the whole command `experiments/sweep.py --preset book`",
    "jaxreg": "jaxreg child (`variants.run`, then each bucket alone)",
    "keras": "Keras 3 child (JAX backend), the models one after the other",
}


def whole_processes(args, ok: dict) -> list[str]:
    """The side-by-side table of whole processes: wall, CPU s, cores used, peak RSS (medians over repeats), and the ratios."""
    rows = []
    for fw, rs in ok.items():
        if not rs:
            continue
        med = lambda key: C.median(r[key] for r in rs)  # noqa: E731
        rows.append(
            [
                PROCESS_NAMES[fw],
                C.fmt(med("process_wall_s"), ".1f") + f" ({', '.join(format(r['process_wall_s'], '.1f') for r in rs)})",
                C.fmt(med("process_cpu_s"), ".1f"),
                C.fmt(med("cores_used"), ".2f") + f" ({', '.join(format(r['cores_used'], '.2f') for r in rs)})",
                C.fmt_bytes(med("process_max_rss_bytes")),
                ", ".join("/".join(f"{x:.1f}" for x in r["loadavg_before"]) for r in rs if r.get("loadavg_before")),
            ]
        )
    if not rows:
        return []
    lines = [
        f"\n### Whole processes, side by side ({args.repeats} repeat(s), interleaved; medians, each repeat in brackets)\n"
    ]
    lines.append(
        C.markdown_table(
            [
                "process",
                "wall s",
                "CPU s (user + system)",
                "cores used (CPU s / wall)",
                "peak RSS",
                "load avg before (1/5/15 min)",
            ],
            rows,
        )
    )
    b, k = ok.get("book", []), ok.get("keras", [])
    if b:
        first = b[0]
        where = "; ".join(
            f"{'x'.join(map(str, p['widths']))} [{', '.join(p['variants'])}] on {'+'.join(p['devices'] or ['?'])}"
            for p in first["plan"]
        )
        lines.append(
            f"\nThe book command ran on {first['devices']['count']} {first['devices']['platform']} device(s), placement "
            f"{first['devices'].get('placement', 'shard')!r}: {where}. Its own clock (status.json): compiling and training "
            f"{C.median(r['train_wall_s'] for r in b):.1f} s, of which compiling {C.median(r['compile_s'] for r in b):.1f} s "
            f"(medians). Arguments: {first['command']}"
        )
    if b and k:
        speed = C.median(r["process_wall_s"] for r in k) / C.median(r["process_wall_s"] for r in b)
        memory = C.median(r["process_max_rss_bytes"] for r in b) / C.median(r["process_max_rss_bytes"] for r in k)
        pairs = ", ".join(f"{kr['process_wall_s'] / br['process_wall_s']:.2f}x" for br, kr in zip(b, k))
        lines.append(
            f"\nRatios (whole processes): jaxreg's book command is {speed:.2f}x faster than Keras (per repeat: {pairs}), "
            f"with {memory:.2f} of its peak RSS ({1 / memory:.1f}x less), using {C.median(r['cores_used'] for r in b):.2f} "
            f"cores on average against Keras' {C.median(r['cores_used'] for r in k):.2f}."
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_data_args(parser)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--models", default="all", help="comma-separated subset of " + ",".join(C.STUDY_MODELS))
    parser.add_argument("--repeats", type=int, default=1, help="run each framework this many times (fresh processes)")
    parser.add_argument(
        "--frameworks",
        default="book,keras",
        help="comma-separated subset of book,jaxreg,keras, run in that order in every repeat: book is the "
        "whole command experiments/sweep.py --preset book; jaxreg a child calling variants.run (then each "
        "bucket alone); keras the Keras 3 child",
    )
    parser.add_argument(
        "--book-args",
        default="",
        help="extra arguments for experiments/sweep.py, e.g. '--placement shard' or '--no-compile-cache'",
    )
    parser.add_argument(
        "--keep-xla-flags",
        action="store_true",
        help="pass XLA_FLAGS on to experiments/sweep.py (default: removed, so it picks its devices itself)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write machine-readable results (every repeat, every epoch) here")
    parser.add_argument(
        "--jaxreg-product",
        default="auto",
        choices=("auto", "sparse", "dense"),
        help="RunSettings.product: how jaxreg's first layer multiplies the multi-hot input",
    )
    parser.add_argument(
        "--jaxreg-optimizer",
        default="keras3",
        choices=("keras3", "keras2"),
        help="RMSprop eps placement for jaxreg (keras3 matches the Keras 3 it is compared with)",
    )
    parser.add_argument(
        "--keras-dtype",
        default="float32",
        choices=("float32", "float64"),
        help="dtype of Keras' dense input matrices (the book's were float64)",
    )
    parser.add_argument(
        "--bucket-epochs", type=int, default=3, help="epochs of the per-bucket jaxreg profile after the run (0: skip)"
    )
    parser.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = C.parse_models(args.models)
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1")

    if args.child:
        result = (keras_child if args.child == "keras" else jaxreg_child)(args)
        C.write_json(args.child_out, result)
        return 0

    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not frameworks or any(f not in FRAMEWORKS for f in frameworks):
        parser.error(f"--frameworks must be a subset of {','.join(FRAMEWORKS)}")
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    for rep in range(args.repeats):  # interleaved: every repeat runs each framework once, so all see the same machine
        for fw in frameworks:
            C.log(f"== repeat {rep + 1}/{args.repeats}: {fw} ==")
            runs[fw].append(launch_book(args) if fw == "book" else launch(fw, args))
            r = runs[fw][-1]
            C.log(
                f"[{fw}] whole process {r['process_wall_s']:.1f} s, {r['process_cpu_s']:.1f} CPU s "
                f"({r['cores_used']:.2f} cores), peak RSS {C.fmt_bytes(r['process_max_rss_bytes'])}"
            )
    text = report(args, runs)
    print(text)
    C.write_json(
        args.json,
        {
            "benchmark": "vs_keras",
            "settings": {k: v for k, v in vars(args).items() if k not in ("child", "child_out", "json")},
            "runs": runs,
            "report": text,
        },
    )
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
