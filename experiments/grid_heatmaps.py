"""Heatmaps of a learning rate x strength grid: python experiments/grid_heatmaps.py RUN [--out PNG]

For a run such as `--preset adamw-vs-l2` (Loshchilov and Hutter's Figure 2): one column of
panels per family of variants (optimizer + the regularizer it carries: Adam + L2 penalty,
AdamW + decoupled decay), the learning rate across, the strength up; rows: best and final
validation data loss and the validation error at the best epoch, means over seeds
(jaxreg.plots.plot_grid_heatmaps). A variant without regularization sits at strength 0 in
every family of its learning rate (the shared reference). A decoupled decay is shown as the
paper's per-step decay lam = weight_decay x learning_rate (jaxreg's, like optax's, decay is
multiplied by the learning rate). Also prints, per family, the best strength per learning rate.
Works on running (epochs every variant has) and finished runs; writes RUN/figures/grid_heatmaps.png
unless --out is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STRENGTHS = {  # field -> (family suffix, y-axis label)
    "l2": ("L2 penalty", "L2 penalty c (c sum w^2 in the loss)"),
    "l1": ("L1 penalty", "L1 penalty c"),
    "weight_decay": ("decoupled decay", "decay per step lam (= weight_decay x lr)"),
    "l1_proximal": ("proximal L1", "proximal L1 strength"),
}
OPTIMIZER_NAMES = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "sgdw": "SGDW",
    "lion": "Lion",
    "adam_keras": "Adam (Keras)",
}


def strength(variant: dict) -> tuple[str | None, float]:
    """(field, y value) of a recorded variant's one regularizer; (None, 0.0) without one."""
    present = [f for f in STRENGTHS if variant.get(f)]
    if len(present) > 1:
        raise ValueError(f"{variant['name']} carries {present}: one regularizer per variant on a grid")
    if not present:
        return None, 0.0
    field = present[0]
    value = variant[field] * variant["learning_rate"] if field == "weight_decay" else variant[field]
    return field, float(f"{value:.10g}")  # lam / lr * lr back to lam, not lam + 1 ulp (one row per lam)


def grid_cells(variants: list[dict]) -> tuple[dict, dict]:
    """({variant: [(family, learning rate, strength)]}, {family: y label}) from config.json's variants."""
    placed, references, labels = {}, [], {}
    for v in variants:
        field, y = strength(v)
        if field is None:
            references.append(v)
            continue
        family = f"{OPTIMIZER_NAMES.get(v['optimizer'], v['optimizer'])} + {STRENGTHS[field][0]}"
        labels[family] = STRENGTHS[field][1]
        placed[v["name"]] = [(family, v["learning_rate"], y)]
    for v in references:  # plain: at 0 in each family (rounded lam values stay on the grid's rows)
        placed[v["name"]] = [(family, v["learning_rate"], 0.0) for family in labels]
    return placed, labels


def best_strengths(matrices: dict) -> list[str]:
    """Lines 'family: lr -> best strength (value)' from plots.grid_matrices."""
    import numpy as np

    lines = []
    for family, (xs, ys, grid) in matrices.items():
        best = []
        for j, x in enumerate(xs):
            column = grid[:, j]
            if np.isfinite(column).any():
                i = int(np.nanargmin(column))
                best.append(f"lr {x:g}: {ys[i]:g} ({column[i]:.4f})")
        lines.append(f"{family}: " + ", ".join(best))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder written by experiments/sweep.py")
    p.add_argument("--out", type=Path, help="the PNG to write (default RUN/figures/grid_heatmaps.png)")
    args = p.parse_args(argv)
    from jaxreg import load_run, plots, report
    from jaxreg.specs import training_descriptions

    run = load_run(args.run)
    histories, epochs = report.common_epochs(run.histories)
    cells, labels = grid_cells([v for v in run.config["variants"] if v["name"] in histories])
    if not labels:
        print(f"grid_heatmaps.py: {args.run} has no regularized variants to put on a grid", file=sys.stderr)
        return 2
    for metric, which, label in plots.HEATMAP_ROWS:
        print(f"\nlowest {label} per learning rate (mean over seeds):")
        print("\n".join(best_strengths(plots.grid_matrices(histories, cells, metric, which))))
    out = args.out or Path(args.run) / "figures" / "grid_heatmaps.png"
    name = run.config.get("config", {}).get("name", "run")
    title = f"{name}, {epochs} epochs: learning rate x strength"
    training = training_descriptions(run.config["variants"])
    plots.plot_grid_heatmaps(histories, cells, out, "learning rate", labels, title=title, training=training)
    print(f"\nWrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
