"""python experiments/sweep.py --preset learning-curve

Learning curves: the book's models trained on the first n reviews (500 to 25,000, log-spaced) of each seed's permutation.

"Get more training data" is the book's first remedy for overfitting, never measured there.
Each variant trains on its own training-set size inside the same program (jaxreg.views),
with the batches and steps that a run on those n reviews alone would take: 20 epochs of
ceil(n / 512) steps. Validation is the book's (the full test set).
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

SIZES = (500, 1100, 2400, 5200, 11500, 25000)  # log-spaced, rounded: numpy.geomspace(500, 25000, 6)
MODELS = {
    "original": dict(widths=(16, 16)),
    "smaller": dict(widths=(6, 6)),
    "bigger": dict(widths=(1024, 1024)),
    "l2": dict(widths=(16, 16), l2=0.001),
    "dropout": dict(widths=(16, 16), dropout_rate=0.5),
}  # as in the book preset


def get_config() -> SweepConfig:
    return SweepConfig(
        name="learning-curve",
        description=__doc__.strip().splitlines()[2],
        variants=tuple(
            VariantSpec(f"{model}_n{n}", **fields, train_size=n) for model, fields in MODELS.items() for n in SIZES
        ),
        axis="train_size",
    )
