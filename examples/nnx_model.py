"""Your own Flax NNX model in the variant engine: an MLP on multi-hot reviews, trained as variants.

`jaxreg.nnx_model(MultiHotMLP, num_words, hidden=...)` names the module's class and its
constructor's arguments (without `rngs`): jaxreg builds it once per seed, from that seed's key,
trains its nnx.Param state (stacked over variants, in one compiled program per distinct
module) and saves it as a dict ({"params": {"hidden": {"kernel", "bias"}, "output": ...}}).
Its `__call__(x, dropout_rate, dropout_key)` takes the dropout rate as a traced number, so
each variant's `dropout_rate` applies inside one program; L2 acts on every "kernel" outside
the "output" layer. Two widths x (none, dropout, L2) x seeds on IMDB-like synthetic data
(offline, seconds).

    python examples/nnx_model.py [--epochs 8] [--seeds 3]

Last line: `best validation accuracy: <value>`.
"""

from __future__ import annotations

import argparse

import jax
from flax import nnx

import jaxreg
from jaxreg.dropout import dropout
from jaxreg.model import multi_hot_matmul


class MultiHotMLP(nnx.Module):
    """multi-hot words -> ReLU layer -> dropout -> one logit. The first product goes through
    `multi_hot_matmul`, since the engine hands the model sparse batches (and dense arrays at init)."""

    def __init__(self, num_words: int, hidden: int = 16, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(num_words, hidden, rngs=rngs)
        self.output = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x, dropout_rate, dropout_key):
        h = jax.nn.relu(multi_hot_matmul(x, self.hidden.kernel[...]) + self.hidden.bias[...])
        return self.output(dropout(h, dropout_rate, dropout_key))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)

    num_words = 2000
    data = jaxreg.synthetic_dataset(n_train=4000, n_validation=2000, num_words=num_words, seed=0)
    variants = []
    for hidden in (8, 32):
        model = jaxreg.nnx_model(MultiHotMLP, num_words, hidden=hidden)
        variants += [
            jaxreg.VariantSpec(f"nnx{hidden}", model=model),
            jaxreg.VariantSpec(f"nnx{hidden}_dropout", model=model, dropout_rate=0.5),
            jaxreg.VariantSpec(f"nnx{hidden}_l2", model=model, l2=1e-3),
        ]
    settings = jaxreg.RunSettings(epochs=args.epochs, batch_size=256)
    result = jaxreg.run(jaxreg.with_seeds(variants, range(args.seeds)), data, settings)

    summaries = jaxreg.summarize(jaxreg.stack(result.history, [v.name for v in variants]))
    print(
        f"{len(data.train)} training and {len(data.validation)} validation reviews; {args.seeds} seeds, {args.epochs} epochs"
    )
    print(jaxreg.summary_table(summaries))
    for bucket in result.buckets:
        print(f"program {bucket['model']}: {', '.join(bucket['variants'])} ({bucket['variant_loop']})")
    params = result.params[("nnx8_l2", 0)].final["params"]
    print("nnx8_l2's trained parameters:", {k: {n: v.shape for n, v in p.items()} for k, p in params.items()})
    best = max(summaries, key=lambda s: s.best_val_metric_mean)
    print(f"best variant: {best.name}, epoch {best.best_epoch}")
    print(f"best validation accuracy: {best.best_val_metric_mean:.4f}")
    return best.best_val_metric_mean


if __name__ == "__main__":
    main()
