"""python experiments/sweep.py --preset book

The study of Deep Learning with Python 4.4, exactly: seven models on IMDB, RMSprop (Keras 2.3),
clipped binary cross-entropy, 20 epochs, batch 512, the test set as validation set.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec


def get_config() -> SweepConfig:
    return SweepConfig(
        name="book",
        description=__doc__.strip().splitlines()[2],
        variants=(
            VariantSpec("original", widths=(16, 16)),
            VariantSpec("smaller", widths=(6, 6)),
            VariantSpec("bigger", widths=(1024, 1024)),
            VariantSpec("l2", widths=(16, 16), l2=0.001),
            VariantSpec("l1", widths=(16, 16), l1=0.0001),
            VariantSpec("l1_l2", widths=(16, 16), l1=0.0001, l2=0.0001),
            VariantSpec("dropout", widths=(16, 16), dropout_rate=0.5),
        ),
        epochs=20,
        batch_size=512,
        loss="keras",
        validation="test",
    )
