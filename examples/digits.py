"""Capacity and dropout on handwritten digits: a multiclass study that runs offline in seconds.

scikit-learn's bundled digits (1,797 8x8 images, 10 classes, no download): pixel values
scaled to [0, 1], a seeded holdout of 25 % for validation. Three widths, each with and
without dropout, several seeds: all in one compiled program per width, trained with the
study's RMSprop and the Keras-clipped softmax cross-entropy.

    python examples/digits.py [--epochs 30] [--seeds 3]

Prints the summary (means over seeds, ± std), the path each program ran, and last
`best validation accuracy: <value>` (the best variant's mean at its best epoch).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits

import jaxreg

WIDTHS = (8, 32, 128)
DROPOUT = 0.3


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)

    digits = load_digits()
    data = jaxreg.from_arrays(
        digits.data.astype(np.float32) / 16.0, digits.target, holdout=0.25, seed=0, name="sklearn digits"
    )
    variants = [
        jaxreg.VariantSpec(f"w{w}" + ("_dropout" if rate else ""), (w, w), dropout_rate=rate)
        for w in WIDTHS
        for rate in (0.0, DROPOUT)
    ]
    settings = jaxreg.RunSettings(epochs=args.epochs, batch_size=64, eval_batch_size=512)
    result = jaxreg.run(jaxreg.with_seeds(variants, range(args.seeds)), data, settings)

    summaries = jaxreg.summarize(jaxreg.stack(result.history, [v.name for v in variants]))
    print(
        f"{len(data.train)} training and {len(data.validation)} validation images, {data.num_classes} classes; "
        f"{args.seeds} seeds, {args.epochs} epochs; task {result.task}"
    )
    print(jaxreg.summary_table(summaries))
    for bucket in result.buckets:
        print(
            f"program {bucket['model']}: {', '.join(bucket['variants'])} ({bucket['variant_loop']}, product {bucket['product']})"
        )
    best = max(summaries, key=lambda s: s.best_val_metric_mean)
    print(f"best variant: {best.name}, epoch {best.best_epoch}")
    print(f"best validation accuracy: {best.best_val_metric_mean:.4f}")
    return best.best_val_metric_mean


if __name__ == "__main__":
    main()
