"""L2 penalty strength on a small regression problem: scikit-learn's diabetes data, offline.

442 patients, 10 features (scikit-learn's, already centred and scaled), the target a
disease-progression score (25 to 346). Targets are standardized with the training split's
mean and standard deviation for training (RMSprop's steps are ~learning-rate sized, so raw
targets near 150 would take thousands of steps just to reach their mean); every MSE printed
is converted back to the target's own units, squared: MSE = standardized MSE x std^2.
A (64, 64) MLP, five L2 strengths, several seeds, all in one compiled program.

    python examples/diabetes.py [--epochs 200] [--seeds 3]

Last line: `best validation MSE: <value>` (the best variant's mean over seeds at its best
epoch, in the target's units squared; predicting the training mean gives about 5,900).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_diabetes

import jaxreg

L2 = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)

    x, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(0)
    held_out = np.zeros(len(y), bool)
    held_out[rng.permutation(len(y))[: len(y) // 4]] = True
    mean, std = y[~held_out].mean(), y[~held_out].std()
    standardized = ((y - mean) / std).astype(np.float32)
    data = jaxreg.from_arrays(
        x[~held_out].astype(np.float32),
        standardized[~held_out],
        validation=(x[held_out].astype(np.float32), standardized[held_out]),
        target="regression",
        name="sklearn diabetes (standardized targets)",
    )
    variants = [jaxreg.VariantSpec(f"l2={c:g}", (64, 64), l2=c) for c in L2]
    settings = jaxreg.RunSettings(epochs=args.epochs, batch_size=32, eval_batch_size=256)
    result = jaxreg.run(jaxreg.with_seeds(variants, range(args.seeds)), data, settings)

    summaries = jaxreg.summarize(jaxreg.stack(result.history, [v.name for v in variants]))
    print(
        f"{len(data.train)} training and {len(data.validation)} validation patients; {args.seeds} seeds, "
        f"{args.epochs} epochs; task {result.task}; target mean {mean:.1f}, std {std:.1f}"
    )
    print("(MSE and MAE below in standardized units; x std^2 and x std for the target's units)")
    print(jaxreg.summary_table(summaries))
    baseline = float(np.mean((y[held_out] - mean) ** 2))
    best = min(summaries, key=lambda s: s.best_val_data_loss_mean)
    print(f"predicting the training mean: validation MSE {baseline:.1f}")
    print(f"best variant: {best.name}, epoch {best.best_epoch}, validation MAE {best.best_val_metric_mean * std:.1f}")
    mse = best.best_val_data_loss_mean * std**2
    print(f"best validation MSE: {mse:.1f}")
    return mse


if __name__ == "__main__":
    main()
