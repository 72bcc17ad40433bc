"""python experiments/sweep.py --preset grid

A full factorial grid: width x L2 x dropout x 6 seeds: 168 configurations, 1,008 models of the study's (w, w) MLP.

The book varies one remedy at a time; this grid measures how they interact. Every (w, w) model
of WIDTHS carries every L2 penalty c of L2 (Keras' c * sum(w^2) on the hidden kernels) and every
dropout rate of DROPOUT (after each hidden layer). Variants differing only in these numbers share
a program, so the run trains one program per padded width: widths up to 16 train padded to 16
units (runplan.PaddingPolicy), so 2, 4, 8 and 16 share one program and 32, 64, 128 get one each
(4 programs). The run draws its heatmaps, main effects and interactions (jaxreg.run_figures) and
summary.md opens with the ten best configurations; `python experiments/grid_figures.py RUN` redraws them.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

WIDTHS = (2, 4, 8, 16, 32, 64, 128)
L2 = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DROPOUT = (0.0, 0.25, 0.5, 0.7)
SEEDS = 6


def variant_name(width: int, l2: float, dropout: float) -> str:
    """'w16_l2=0.001_do=0.5': safe as a file name (jaxreg.specs.SAFE_NAME)."""
    return f"w{width}_l2={l2:g}_do={dropout:g}"


def variants() -> tuple[VariantSpec, ...]:
    return tuple(
        VariantSpec(variant_name(w, c, r), widths=(w, w), l2=c, dropout_rate=r)
        for w in WIDTHS
        for c in L2
        for r in DROPOUT
    )


def get_config() -> SweepConfig:
    return SweepConfig(
        name="grid",
        description=__doc__.strip().splitlines()[2],
        variants=variants(),
        seeds=SEEDS,
        epochs=20,
        axis="width",
    )
