"""python experiments/sweep.py --preset label-noise

Label noise: a fraction (0 to 100 %) of each seed's training labels replaced by random ones; validation labels untouched.

Zhang et al. (2017) showed that networks fit even fully random labels. Here a fraction p of
the 25,000 training labels (chosen by the seed) is redrawn uniformly from {0, 1}, so at
p = 1 the labels carry no information and about p / 2 of them are wrong (jaxreg.views).
The 16- and 256-unit models see every noise level; the book's bigger model (1024, 1024)
sees fully random labels only, to show whether and when it memorizes them.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

NOISE = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MODELS = {"original": (16, 16), "w256": (256, 256)}


def get_config() -> SweepConfig:
    return SweepConfig(
        name="label-noise",
        description=__doc__.strip().splitlines()[2],
        variants=(
            *(
                VariantSpec(f"{model}_noise{p:g}", widths=widths, label_noise=p)
                for model, widths in MODELS.items()
                for p in NOISE
            ),
            VariantSpec("bigger_noise1", widths=(1024, 1024), label_noise=1.0),
        ),
        axis="label_noise",
    )
