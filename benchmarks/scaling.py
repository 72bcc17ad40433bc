"""How jaxreg's epoch time scales, and how far it is from the machine's limit.

What it measures, on the real IMDB data (25,000 training reviews, batch 512 = 49 steps, then
validation on 25,000 test reviews), one bucket at a time through variants.BucketProgram:

* variants: 1, 2, 4, ..., 32 configs of the 16-unit model (different l2 values, same seed,
  so they share batches) and 1, 2, 4 of the 1024-unit model, with the marginal cost of
  one more variant, (t_n - t_1) / (n - 1), relative to t_1;
* width: one (w, w) model for w = 1, 2, 4, ..., 1024;
* seeds: n seeds of the original (16, 16) config, each seed with its own batches;
* optimizers16: n = 1 and 16 variants of the 16-unit model with RMSprop ("keras2", jaxreg's
  fused CPU step; "keras3", the same optimizer through optax, not fused) and with Adam ("adam",
  jaxreg's fused CPU step; "adam_optax", the same through optax's chain, not fused), every
  bucket's epochs run in turn, and the per-variant epoch ratio Adam / RMSprop (fused / fused);
* the machine's limits: median GFLOP/s of plain float32 matmuls in JAX (2048^3, the dense
  first layer 512x10000 @ 10000x1024, its kernel gradient 10000x512 @ 512x1024, the hidden
  layer 512x1024 @ 1024x1024), copy bandwidth (x + 1 over a 256 MB array, read + write
  bytes) and, as diagnostics, the rate of the sparse first layer's primitives (a row gather
  and a scatter-add of one batch's ~67k rows of a 10,000 x 1,024 kernel).

Each point's time per epoch is the median over the epochs after the first; the first
epoch's extra time is reported as compile overhead. The marginal cost is taken from a
second, side-by-side measurement: every size's bucket is built and compiled, then their
epochs run in turn (1, 2, 4, ..., 1, 2, 4, ...), so that t_n and t_1 see the same machine
conditions (points measured minutes apart drift by 10-30% on a shared machine). train_batches (the host building and
transferring an epoch's sparse batches) is timed apart and not part of the epoch.

The floor (printed with the model's terms, see `floor_model`) is what one epoch would cost
if every term ran at the measured limit: memory-bound terms at the copy bandwidth,
FLOP-bound terms at the best matmul rate, one after the other (no overlap):
  first layer forward   gather nnz x W1 floats (nnz: active (review, word) pairs)
  first layer backward  the cheaper of a scatter of nnz x W1 floats and the dense product
                        multi_hot^T @ delta (2 x reviews x 10,000 x W1 FLOP)
  hidden/output layers  forward 2 x reviews x W1 x W2 (+ W2) FLOP, backward twice that
  RMSprop               5 passes over all parameters per step (read w, g, a; write w, a)
  validation            gather nnz_val x W1 floats + the hidden layers' forward FLOP
all times the number of variants. It is a floor for data that streams from memory (the
1024-unit model); narrow first layers (a 16-unit kernel is 640 kB) stay in cache, where
reads are faster than the copy bandwidth, so small buckets can beat it (epoch / floor < 1).
"useful first-layer GFLOP/s" counts
2 x nnz x W1 for the training forward, the same for the backward and 2 x nnz_val x W1
for validation, over the measured epoch: the work a sparse kernel cannot avoid,
against the matmul peak.

Run (from the repository root, venv active):

    python benchmarks/scaling.py --quick --json /tmp/scaling.json   # a few minutes
    python benchmarks/scaling.py                                    # all sizes (long on 2 cores)
    python benchmarks/scaling.py --sections limits,width --product sparse
    python benchmarks/scaling.py --sections optimizers16 --epochs 10       # Adam against RMSprop

The report (Markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SECTIONS = ("limits", "variants16", "variants1024", "width", "seeds", "optimizers16")
FULL = {
    "variants16": [1, 2, 4, 8, 16, 32],
    "optimizers16": [1, 16],
    "variants1024": [1, 2, 4],
    "width": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    "seeds": [1, 2, 4, 8],
}
QUICK = {
    "variants16": [1, 4, 16],
    "optimizers16": [1, 16],
    "variants1024": [1, 2],
    "width": [1, 16, 128, 1024],
    "seeds": [1, 4],
}
# optimizers16: RMSprop with jaxreg's fused CPU step (keras2), Keras 3's RMSprop through optax (not fused), optax's
# Adam with jaxreg's fused CPU step (adam) and through optax's chain (adam_optax: the same bucket, fused step off)
OPTIMIZERS = ("keras2", "keras3", "adam", "adam_optax")
UNFUSED = {"adam_optax": "adam"}  # a row name -> the optimizer it runs with the fused step turned off
BATCH_SIZE = 512
EVAL_BATCH_SIZE = 1024
FLOAT = 4  # bytes


# --- machine limits ---------------------------------------------------------------------------


def _time(fn, *xs, repeats: int) -> list[float]:
    import jax

    jax.block_until_ready(fn(*xs))  # compile + warm up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*xs))
        out.append(time.perf_counter() - start)
    return out


def measure_limits(repeats: int, batch_rows_cols) -> dict:
    """Median matmul GFLOP/s per shape, copy bandwidth, gather and scatter-add rates."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    matmul = jax.jit(lambda a, b: a @ b)
    shapes = {
        "2048x2048 @ 2048x2048": (2048, 2048, 2048),
        "512x10000 @ 10000x1024 (dense first layer)": (512, 10000, 1024),
        "10000x512 @ 512x1024 (its kernel gradient)": (10000, 512, 1024),
        "512x1024 @ 1024x1024 (hidden layer)": (512, 1024, 1024),
    }
    results = {"matmul_gflops": {}}
    for name, (m, k, n) in shapes.items():
        a = jax.random.normal(key, (m, k), jnp.float32)
        b = jax.random.normal(jax.random.fold_in(key, 1), (k, n), jnp.float32)
        t = C.median(_time(matmul, a, b, repeats=repeats))
        results["matmul_gflops"][name] = 2 * m * k * n / t / 1e9
        C.log(f"[limits] matmul {name}: {results['matmul_gflops'][name]:.1f} GFLOP/s")
        del a, b
    results["matmul_peak_gflops"] = max(results["matmul_gflops"].values())

    n_floats = 64 * 2**20  # 256 MB
    x = jnp.ones((n_floats,), jnp.float32)
    add_one = jax.jit(lambda x: x + 1.0, donate_argnums=0)  # in place: no fresh output buffer
    x = add_one(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = jax.block_until_ready(add_one(x))
        times.append(time.perf_counter() - start)
    results["copy_gbs"] = 2 * n_floats * FLOAT / C.median(times) / 1e9
    t = C.median(_time(jax.jit(lambda x: x + 1.0), x, repeats=repeats))
    results["copy_fresh_output_gbs"] = 2 * n_floats * FLOAT / t / 1e9
    C.log(
        f"[limits] copy (x + 1 in place, read + write): {results['copy_gbs']:.1f} GB/s; "
        f"into a fresh output buffer: {results['copy_fresh_output_gbs']:.1f} GB/s"
    )
    del x

    # The sparse first layer's primitives on one real batch: (row, column) pairs of 512 reviews.
    rows, cols = batch_rows_cols
    nnz = len(cols)
    rows, cols = jnp.asarray(rows), jnp.asarray(cols)
    kernel = jax.random.normal(key, (10000, 1024), jnp.float32)
    gather_sum = jax.jit(
        lambda k, r, c: jax.ops.segment_sum(jnp.take(k, c, axis=0), r, BATCH_SIZE, indices_are_sorted=True)
    )
    t = C.median(_time(gather_sum, kernel, rows, cols, repeats=repeats))
    results["gather_sum_gbs"] = nnz * 1024 * FLOAT / t / 1e9
    delta = jax.random.normal(key, (BATCH_SIZE, 1024), jnp.float32)
    scatter = jax.jit(lambda g, d, r, c: g.at[c].add(jnp.take(d, r, axis=0)), donate_argnums=0)
    grad = jnp.zeros((10000, 1024), jnp.float32)
    grad = scatter(grad, delta, rows, cols)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        grad = jax.block_until_ready(scatter(grad, delta, rows, cols))
        times.append(time.perf_counter() - start)
    results["scatter_add_gbs"] = nnz * 1024 * FLOAT / C.median(times) / 1e9
    results["batch_pairs"] = nnz
    C.log(
        f"[limits] gather + segment sum {results['gather_sum_gbs']:.1f} GB/s, scatter-add {results['scatter_add_gbs']:.1f} GB/s "
        f"({nnz} (row, column) pairs of one batch, rows of 1024 floats)"
    )
    from jaxreg import embedding_bag as eb

    if jax.default_backend() == "cpu" and eb.cpu_kernels_available():  # what jaxreg runs instead on CPU
        forward = jax.jit(lambda k, r, c: eb.embedding_bag(k, r, c, BATCH_SIZE))
        backward = jax.jit(lambda k, r, c, d: jax.vjp(lambda k: eb.embedding_bag(k, r, c, BATCH_SIZE), k)[1](d)[0])
        results["kernel_forward_gbs"] = (
            nnz * 1024 * FLOAT / C.median(_time(forward, kernel, rows, cols, repeats=repeats)) / 1e9
        )
        results["kernel_backward_gbs"] = (
            nnz * 1024 * FLOAT / C.median(_time(backward, kernel, rows, cols, delta, repeats=repeats)) / 1e9
        )
        C.log(
            f"[limits] jaxreg CPU kernels: forward {results['kernel_forward_gbs']:.1f} GB/s, "
            f"backward {results['kernel_backward_gbs']:.1f} GB/s"
        )
    return results


# --- the floor ----------------------------------------------------------------------------------


def data_stats(ds) -> dict:
    import math

    n = len(ds.train)
    return {
        "train_reviews": n,
        "val_reviews": len(ds.validation),
        "train_nnz": int(ds.train.x.indices.size),
        "val_nnz": int(ds.validation.x.indices.size),
        "num_words": ds.num_words,
        "steps": math.ceil(n / BATCH_SIZE),
    }


def floor_model(widths, n_variants: int, stats: dict, limits: dict) -> dict:
    """Seconds per epoch if each term ran at the machine's measured limit (see module docstring)."""
    bw, peak = limits["copy_gbs"] * 1e9, limits["matmul_peak_gflops"] * 1e9
    V, N, Nv = stats["num_words"], stats["train_reviews"], stats["val_reviews"]
    w1 = widths[0]
    sizes = (V, *widths, 1)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    upper_flop = sum(2 * a * b for a, b in zip(sizes[1:-1], sizes[2:]))  # per review, layers after the first
    terms = {
        "first layer forward (gather)": stats["train_nnz"] * w1 * FLOAT / bw,
        "first layer backward (scatter or dense)": min(stats["train_nnz"] * w1 * FLOAT / bw, 2 * N * V * w1 / peak),
        "hidden + output layers (fwd + bwd)": 3 * N * upper_flop / peak,
        "RMSprop (5 x params per step)": 5 * params * FLOAT * stats["steps"] / bw,
        "validation forward": stats["val_nnz"] * w1 * FLOAT / bw + Nv * upper_flop / peak,
    }
    terms = {k: v * n_variants for k, v in terms.items()}
    useful = 2 * w1 * (2 * stats["train_nnz"] + stats["val_nnz"]) * n_variants
    return {"terms_s": terms, "floor_s": sum(terms.values()), "useful_first_layer_flop": useful}


# --- one point ------------------------------------------------------------------------------------


def measure_point(specs, ds, epochs: int, product: str) -> dict:
    """Time one bucket's epochs; returns the per-epoch times, their median after the first, compile overhead."""
    from jaxreg import variants as V

    buckets = V.plan(specs)
    if len(buckets) != 1:
        raise RuntimeError(f"expected one bucket, got {len(buckets)}")
    bucket = buckets[0]
    settings = V.RunSettings(
        epochs=epochs, batch_size=BATCH_SIZE, eval_batch_size=EVAL_BATCH_SIZE, loss="keras", product=product
    )
    timing = C.time_bucket(bucket, ds, settings, epochs)
    out = {
        "widths": list(bucket.widths),
        "configs": len(bucket.configs),
        "seeds": len(bucket.seeds),
        "product": timing["product"],
        "setup_s": timing["construct_s"] + timing["init_s"],  # BucketProgram() + init (compiles init)
        "batch_prep_s": timing["batch_prep_s"],
        "epoch_seconds": timing["epoch_seconds"],
        "epoch_s": timing["median_epoch_s"],
        "compile_overhead_s": timing["compile_overhead_s"],
        "peak_rss_bytes": timing["peak_rss_bytes"],
    }
    return out


def side_by_side(specs_by_n: dict, ds, epochs: int, product: str, unfused=()) -> dict:
    """{n: median epoch time} with every size's epochs run in turn (1, 2, 4, ..., 1, 2, 4, ...).

    The points of `sweep` run one after the other, minutes apart, and this shared machine
    drifts by 10-30% over minutes; a marginal cost is a ratio of two points, so it is taken
    from epochs interleaved like this, which all see the same conditions. Keys in `unfused`
    run their bucket with the fused first-layer step turned off (the optax chain).
    """
    import jax

    from jaxreg import variants as V

    settings = V.RunSettings(
        epochs=2, batch_size=BATCH_SIZE, eval_batch_size=EVAL_BATCH_SIZE, loss="keras", product=product
    )
    runs = {}
    for n, specs in specs_by_n.items():
        (bucket,) = V.plan(specs)
        program = V.BucketProgram(_without_fused_step(bucket, ds, settings) if n in unfused else bucket, ds, settings)
        C.log(f"  {n}: optimizer {program.config.optimizer}, fused first-layer step {program.config.fused_update}")
        state, mask = program.init()
        batches = program.train_batches(0)
        state, metrics = program.epoch(state, mask, batches)  # compile
        jax.block_until_ready(metrics)
        runs[n] = {"program": program, "state": state, "mask": mask, "batches": batches, "times": []}
    for _ in range(epochs):
        for run in runs.values():
            start = time.perf_counter()
            run["state"], metrics = run["program"].epoch(run["state"], run["mask"], run["batches"])
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - start)
    return {n: C.median(run["times"]) for n, run in runs.items()}


def _without_fused_step(bucket, ds, settings):
    """The bucket's plan on the default devices with the fused first-layer step off (the optax chain)."""
    import dataclasses

    from jaxreg import runplan
    from jaxreg import variants as V

    planned = runplan.plan_run([bucket], ds, settings, [tuple(V.variant_mesh().devices.flat)], "given").buckets[0]
    step = dataclasses.replace(planned.execution.step, fused_update=False)
    return dataclasses.replace(planned, execution=dataclasses.replace(planned.execution, step=step))


def section_specs(section: str, n: int) -> list:
    from jaxreg.variants import VariantSpec

    if section == "variants16":
        return [VariantSpec(f"l2_{i}", (16, 16), l2=1e-4 * (i + 1)) for i in range(n)]
    if section == "variants1024":
        return [VariantSpec(f"l2_{i}", (1024, 1024), l2=1e-4 * (i + 1)) for i in range(n)]
    if section == "width":
        return [VariantSpec(f"w{n}", (n, n))]
    if section == "seeds":
        return [VariantSpec("original", (16, 16), seed=s) for s in range(n)]
    raise ValueError(section)


def sweep(section: str, sizes, ds, args, stats, limits) -> list[dict]:
    rows = []
    for n in sizes:
        specs = section_specs(section, n)
        C.log(f"[{section}] n={n} ...")
        row = {"n": n, **measure_point(specs, ds, args.epochs + 1, args.product)}
        if limits:
            fl = floor_model(row["widths"], row["configs"] * row["seeds"], stats, limits)
            row["floor_s"] = fl["floor_s"]
            row["floor_terms_s"] = fl["terms_s"]
            row["useful_first_layer_gflops"] = fl["useful_first_layer_flop"] / row["epoch_s"] / 1e9
        C.log(
            f"[{section}] n={n}: {row['epoch_s']:.2f} s/epoch ({row['product']}), compile {row['compile_overhead_s']:.1f} s, "
            f"batches {row['batch_prep_s']:.2f} s"
        )
        rows.append(row)
    if section != "width" and rows and rows[0]["n"] == 1:
        C.log(f"[{section}] side by side: {args.epochs} epochs of every size in turn ...")
        together = side_by_side(
            {row["n"]: section_specs(section, row["n"]) for row in rows}, ds, args.epochs, args.product
        )
        t1 = together[1]
        for row in rows:
            row["side_by_side_epoch_s"] = together[row["n"]]
            if row["n"] > 1:
                row["marginal_s"] = (together[row["n"]] - t1) / (row["n"] - 1)
                row["marginal_rel"] = row["marginal_s"] / t1
    return rows


def optimizer_specs(optimizer: str, n: int) -> list:
    from jaxreg.variants import VariantSpec

    optimizer = UNFUSED.get(optimizer, optimizer)
    return [VariantSpec(f"l2_{i}", (16, 16), l2=1e-4 * (i + 1), optimizer=optimizer) for i in range(n)]


def compare_optimizers(sizes, ds, args) -> list[dict]:
    """Per size n: the median epoch of n 16-unit variants with each of OPTIMIZERS, all buckets' epochs run
    in turn (`side_by_side`), and Adam's per-variant epoch over RMSprop's."""
    C.log(f"[optimizers16] side by side: {args.epochs} epochs of {', '.join(OPTIMIZERS)} x n = {sizes} in turn ...")
    unfused = {(opt, n) for n in sizes for opt in UNFUSED}
    together = side_by_side(
        {(opt, n): optimizer_specs(opt, n) for n in sizes for opt in OPTIMIZERS},
        ds,
        args.epochs,
        args.product,
        unfused,
    )
    rows = []
    for n in sizes:
        times = {opt: together[(opt, n)] for opt in OPTIMIZERS}
        rows.append({"n": n, "epoch_s": times, "ratio": times["adam"] / times["keras2"]})
        C.log(f"[optimizers16] n={n}: " + ", ".join(f"{o} {t:.3f} s/epoch" for o, t in times.items()))
    return rows


def optimizer_table(rows) -> str:
    header = [
        "variants",
        "RMSprop keras2 (fused) s/epoch",
        "RMSprop keras3 (optax) s/epoch",
        "Adam (fused) s/epoch",
        "Adam (optax) s/epoch",
        "per variant: keras2 / Adam (fused)",
        "Adam / keras2 (fused / fused)",
        "Adam / keras3 (optax / optax)",
    ]
    table = [
        [
            r["n"],
            *(f"{r['epoch_s'][opt]:.3f}" for opt in OPTIMIZERS),
            f"{r['epoch_s']['keras2'] / r['n']:.4f} / {r['epoch_s']['adam'] / r['n']:.4f}",
            f"{r['ratio']:.2f}x",
            f"{r['epoch_s']['adam_optax'] / r['epoch_s']['keras3']:.2f}x",
        ]
        for r in rows
    ]
    return C.markdown_table(header, table)


# --- report -------------------------------------------------------------------------------------


def report(args, info, stats, limits, results) -> str:
    lines = [C.describe_machine(info)]
    lines.append(
        f"Data: {stats['train_reviews']:,} training reviews ({stats['train_nnz']:,} active (review, word) pairs, "
        f"{stats['train_nnz'] / stats['train_reviews']:.1f} per review), {stats['val_reviews']:,} validation reviews "
        f"({stats['val_nnz']:,} pairs); batch {BATCH_SIZE} ({stats['steps']} steps), validation batch {EVAL_BATCH_SIZE}."
    )
    lines.append(
        f"Each point: 1 + {args.epochs} epochs of one bucket (BucketProgram), s/epoch = median of the last {args.epochs}; "
        f"compile = first epoch - median. Product: {args.product!r} (auto: sparse embedding bag with jaxreg's CPU kernels; "
        "without them sparse up to 256 first-layer columns at once, dense matmul above)."
    )
    if limits:
        lines.append("\n### Machine limits\n")
        rows = [[f"matmul {k}", f"{v:.1f} GFLOP/s"] for k, v in limits["matmul_gflops"].items()]
        rows += [
            ["copy bandwidth (x + 1 in place on 256 MB, read + write bytes)", f"{limits['copy_gbs']:.1f} GB/s"],
            [
                "the same into a fresh output buffer (diagnostic: cost of new buffers)",
                f"{limits['copy_fresh_output_gbs']:.1f} GB/s",
            ],
            [
                f"gather + segment sum of one batch, {limits['batch_pairs']:,} rows of a 10000x1024 kernel (diagnostic)",
                f"{limits['gather_sum_gbs']:.1f} GB/s",
            ],
            [
                f"scatter-add of one batch, {limits['batch_pairs']:,} rows into a 10000x1024 gradient, in place (diagnostic)",
                f"{limits['scatter_add_gbs']:.1f} GB/s",
            ],
        ]
        if "kernel_forward_gbs" in limits:
            rows += [
                [
                    "the same gather + sum by jaxreg's CPU kernel (embedding_bag forward)",
                    f"{limits['kernel_forward_gbs']:.1f} GB/s",
                ],
                [
                    "the gradient by jaxreg's CPU kernel (embedding_bag backward, fresh 40 MB output)",
                    f"{limits['kernel_backward_gbs']:.1f} GB/s",
                ],
            ]
        lines.append(C.markdown_table(["measure", "median"], rows))
        lines.append(
            f"\nFloor model (per epoch, x variants): memory terms at {limits['copy_gbs']:.1f} GB/s, FLOP terms at the best "
            f"matmul, {limits['matmul_peak_gflops']:.1f} GFLOP/s, run one after the other. First layer forward: gather "
            "nnz x W1 floats; backward: the cheaper of a scatter of nnz x W1 floats and the dense product "
            "(2 x reviews x 10,000 x W1 FLOP); hidden + output layers: forward 2 x reviews x W1 x W2 FLOP, backward twice "
            "that; RMSprop: all parameters through memory 5 times per step (read w, g, a; write w, a); validation: "
            "gather nnz_val x W1 floats + hidden forward FLOP. A floor where data streams from memory (the 1024-unit "
            "model); a 16-unit kernel (640 kB) stays in cache, so small buckets can beat it (epoch / floor < 1)."
        )
        big = floor_model((1024, 1024), 1, stats, limits)
        lines.append("\nFloor of one epoch of the 1024-unit model (one variant):\n")
        lines.append(
            C.markdown_table(
                ["term", "seconds"],
                [[k, f"{v:.3f}"] for k, v in big["terms_s"].items()] + [["**floor**", f"**{big['floor_s']:.3f}**"]],
            )
        )

    titles = {
        "variants16": "Variants of the 16-unit model (same seed, different l2: shared batches)",
        "variants1024": "Variants of the 1024-unit model (same seed, different l2)",
        "width": "Width (one (w, w) variant)",
        "seeds": "Seeds of the original (16, 16) config (each seed its own batches)",
    }
    for section, rows in results.items():
        if section == "limits" or not rows:
            continue
        if section == "optimizers16":
            lines.append("\n### RMSprop against Adam, variants of the 16-unit model (different l2, same seed)\n")
            lines.append(
                optimizer_table(rows) + f"\n\nMedians of {args.epochs} epochs per bucket, all buckets in turn."
            )
            continue
        lines.append(f"\n### {titles[section]}\n")
        label = {"width": "w", "seeds": "seeds"}.get(section, "variants")
        table = []
        for r in rows:
            table.append(
                [
                    r["n"],
                    "x".join(map(str, r["widths"])),
                    r["product"],
                    f"{r['epoch_s']:.3f}",
                    C.fmt(r.get("side_by_side_epoch_s"), ".3f"),
                    C.fmt(r.get("marginal_s"), ".3f"),
                    C.fmt(None if r.get("marginal_rel") is None else 100 * r["marginal_rel"], ".1f", "%"),
                    f"{r['epoch_s'] / (r['configs'] * r['seeds']):.3f}",
                    f"{r['compile_overhead_s']:.1f}",
                    f"{r['batch_prep_s']:.2f}",
                    C.fmt_bytes(r["peak_rss_bytes"]),
                    C.fmt(r.get("floor_s"), ".3f"),
                    C.fmt(r["epoch_s"] / r["floor_s"] if r.get("floor_s") else None, ".1f", "x"),
                    C.fmt(r.get("useful_first_layer_gflops"), ".2f"),
                ]
            )
        header = [
            label,
            "bucket widths",
            "product",
            "s/epoch",
            "s/epoch side by side",
            "marginal s/variant",
            "marginal / t_1",
            "s/epoch per variant",
            "compile s",
            "train_batches s",
            "peak RSS",
            "floor s",
            "epoch / floor",
            "useful 1st-layer GFLOP/s",
        ]
        if section == "width":
            header[4:7] = ["-", "-", "-"]
        lines.append(C.markdown_table(header, table))
    if limits:
        lines.append(
            f"\ns/epoch: each size alone, one after the other (median of its epochs 2..N, with compile and peak RSS); "
            "s/epoch side by side: all sizes' epochs run in turn after those, so that they see the same machine "
            "conditions (medians); marginal s/variant = (t_n - t_1) / (n - 1) from the side-by-side "
            "times; useful 1st-layer GFLOP/s = 2 x W1 x (2 x nnz_train + nnz_val) "
            f"x variants / epoch time, against the matmul peak of {limits['matmul_peak_gflops']:.1f} GFLOP/s."
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_data_args(parser)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and 2 measured epochs per point")
    parser.add_argument(
        "--epochs", type=int, help="measured epochs per point after the compile epoch (default 3, quick 2)"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    parser.add_argument("--product", default="auto", choices=("auto", "sparse", "dense"), help="RunSettings.product")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each machine-limit measurement")
    parser.add_argument("--json", type=Path, help="write machine-readable results here")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 3
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not sections or any(s not in SECTIONS for s in sections):
        parser.error(f"--sections must be a subset of {','.join(SECTIONS)}")
    sizes = QUICK if args.quick else FULL

    import numpy as np

    from jaxreg.batches import epoch_order

    ds = C.load_dataset(args)
    stats = data_stats(ds)
    info = C.machine_info()
    limits = None
    if "limits" in sections:
        first = ds.train.x.take(epoch_order(0, 0, len(ds.train))[:BATCH_SIZE])
        rows = np.repeat(np.arange(BATCH_SIZE, dtype=np.int32), np.diff(first.indptr))
        limits = measure_limits(args.repeats, (rows, first.indices.astype(np.int32)))
    results = {
        s: compare_optimizers(sizes[s], ds, args)
        if s == "optimizers16"
        else sweep(s, sizes[s], ds, args, stats, limits)
        for s in sections
        if s != "limits"
    }
    text = report(args, info, stats, limits, results)
    print(text)
    C.write_json(
        args.json,
        {
            "benchmark": "scaling",
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": info,
            "data": stats,
            "limits": limits,
            "results": results,
            "report": text,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
