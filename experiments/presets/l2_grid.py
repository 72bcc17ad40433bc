"""python experiments/sweep.py --preset l2-grid

L2 penalty strength (Keras' coupled penalty c * sum(w^2) on the hidden kernels) on a log grid, 16-unit model.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

STRENGTHS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def get_config() -> SweepConfig:
    return SweepConfig(
        name="l2-grid",
        description=__doc__.strip().splitlines()[2],
        variants=tuple(VariantSpec(f"l2_{c:g}", widths=(16, 16), l2=c) for c in STRENGTHS),
        axis="l2",
    )
