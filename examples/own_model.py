"""Your own Flax model in the variant engine: an embedding-bag mean, trained as variants.

The model averages the learned embeddings of a review's words (jaxreg's sparse multi-hot
layer, `MultiHotDense`, divided by the number of words), then one ReLU layer and a logit.
Its `__call__(x, dropout_rate, dropout_key)` takes the dropout rate as a traced number, so
each variant's `dropout_rate` applies inside one compiled program; L2 acts on every
"kernel" outside the "output" layer (`jaxreg.networks.default_penalized`). Three
embedding sizes x (none, dropout, L2) x seeds, at a learning rate of 1e-2 (averaged
embeddings get small gradients), train next to the study's (16, 16) MLP, on IMDB-like
synthetic data (offline, seconds).

    python examples/own_model.py [--epochs 8] [--seeds 3]

Last line: `best validation accuracy: <value>`.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax.numpy as jnp

import jaxreg
from jaxreg.batches import SparseBatch
from jaxreg.dropout import dropout
from jaxreg.model import multi_hot_matmul


class BagMean(nn.Module):
    """mean of the active words' embeddings -> ReLU layer -> dropout -> one logit."""

    embedding: int = 16
    hidden: int = 16

    @nn.compact
    def __call__(self, x, dropout_rate, dropout_key):
        summed = jaxreg.MultiHotDense(self.embedding, name="embedding")(x)  # sparse or dense multi-hot input
        num_words = x.num_words if isinstance(x, SparseBatch) else x.shape[-1]
        words = multi_hot_matmul(x, jnp.ones((num_words, 1), summed.dtype))  # active words per review
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(summed / jnp.maximum(words, 1.0)))
        h = dropout(h, dropout_rate, dropout_key)
        return nn.Dense(1, name="output")(h)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)

    data = jaxreg.synthetic_dataset(n_train=4000, n_validation=2000, num_words=2000, seed=0)
    variants = [jaxreg.VariantSpec("mlp_16_16", (16, 16))]
    for size in (4, 16, 64):
        model = BagMean(embedding=size)
        variants += [
            jaxreg.VariantSpec(f"bag{size}", model=model, learning_rate=1e-2),
            jaxreg.VariantSpec(f"bag{size}_dropout", model=model, dropout_rate=0.5, learning_rate=1e-2),
            jaxreg.VariantSpec(f"bag{size}_l2", model=model, l2=1e-4, learning_rate=1e-2),
        ]
    settings = jaxreg.RunSettings(epochs=args.epochs, batch_size=256)
    result = jaxreg.run(jaxreg.with_seeds(variants, range(args.seeds)), data, settings)

    summaries = jaxreg.summarize(jaxreg.stack(result.history, [v.name for v in variants]))
    print(
        f"{len(data.train)} training and {len(data.validation)} validation reviews; {args.seeds} seeds, {args.epochs} epochs"
    )
    print(jaxreg.summary_table(summaries))
    for bucket in result.buckets:
        print(
            f"program {bucket['model']}: {', '.join(bucket['variants'])} ({bucket['variant_loop']}, "
            f"CPU kernels {bucket['cpu_kernels']}, fused update {bucket['fused_update']})"
        )
    params = result.params[("bag16_l2", 0)].final["params"]
    print("bag16_l2's trained parameters:", {k: {n: v.shape for n, v in p.items()} for k, p in params.items()})
    best = max(summaries, key=lambda s: s.best_val_metric_mean)
    print(f"best variant: {best.name}, epoch {best.best_epoch}")
    print(f"best validation accuracy: {best.best_val_metric_mean:.4f}")
    return best.best_val_metric_mean


if __name__ == "__main__":
    main()
