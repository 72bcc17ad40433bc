"""python experiments/sweep.py --preset dropout-grid

Dropout rate after each hidden layer on a linear grid 0, 0.1, ..., 0.8, 16-unit model.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

RATES = tuple(round(0.1 * i, 1) for i in range(9))


def get_config() -> SweepConfig:
    return SweepConfig(
        name="dropout-grid",
        description=__doc__.strip().splitlines()[2],
        variants=tuple(VariantSpec(f"dropout_{r:g}", widths=(16, 16), dropout_rate=r) for r in RATES),
        axis="dropout_rate",
    )
