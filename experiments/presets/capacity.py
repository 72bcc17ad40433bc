"""python experiments/sweep.py --preset capacity

Capacity: the book's (w, w) model for widths 1, 2, 4, ..., 1024; no regularization.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def get_config() -> SweepConfig:
    return SweepConfig(
        name="capacity",
        description=__doc__.strip().splitlines()[2],
        variants=tuple(VariantSpec(f"w{w}", widths=(w, w)) for w in WIDTHS),
        axis="width",
    )
