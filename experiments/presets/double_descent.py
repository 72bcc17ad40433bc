"""python experiments/sweep.py --preset double-descent

Model-wise double descent: the (w, w) model for widths 1 to 1024 on labels with 20 % noise, trained 40 epochs.

Nakkiran et al. (2019) saw test error peak where a model just barely fits its noisy training
set, and fall again beyond. Here 20 % of the training labels are redrawn at random (about
10 % wrong, jaxreg.views); the preset asks whether a peak appears on this data, at the
width where the model starts to fit every training label.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256, 512, 1024)
NOISE = 0.2


def get_config() -> SweepConfig:
    return SweepConfig(
        name="double-descent",
        description=__doc__.strip().splitlines()[2],
        variants=tuple(VariantSpec(f"w{w}", widths=(w, w), label_noise=NOISE) for w in WIDTHS),
        axis="width",
        epochs=40,
    )
