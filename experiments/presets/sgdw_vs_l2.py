"""python experiments/sweep.py --preset sgdw-vs-l2

SGD with momentum and the coupled L2 penalty against SGDW's decoupled decay, learning rate x strength grids, 16-unit model.

The SGD half of Loshchilov and Hutter's Figure 2 ("Decoupled Weight Decay Regularization", ICLR
2019), beside `adamw-vs-l2`'s Adam half. Both sides run SGD with momentum 0.9 at each learning rate:
  sgd_l2_*: Keras' penalty c * sum(w^2) on the hidden kernels, c in L2: its gradient 2cw enters the
            momentum with the data gradient, so the shrinking per step grows with the learning rate
            (and 1 / (1 - momentum)): the paper's diagonal good region
  sgdw_*:   w -= lam * w per step on the same kernels, outside the momentum (optimizer "sgdw"),
            lam in DECAY; jaxreg's (and optax's) decay is multiplied by the learning rate, so
            weight_decay = lam / learning_rate gives the paper's per-step lam
plus an unregularized SGD per learning rate. Two programs (SGD with its penalty, SGDW), all seeds
in each. `python experiments/grid_heatmaps.py RUN` draws the heatmaps.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

MOMENTUM = 0.9
LEARNING_RATES = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
L2 = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # Keras' coupled penalty c
DECAY = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # the paper's per-step decay lam (weight_decay = lam / learning_rate)


def variants() -> tuple[VariantSpec, ...]:
    def sgd(name, optimizer="sgd", **numbers):
        return VariantSpec(name, optimizer=optimizer, momentum=MOMENTUM, **numbers)

    plain = [sgd(f"sgd_lr{lr:g}", learning_rate=lr) for lr in LEARNING_RATES]
    coupled = [sgd(f"sgd_l2_lr{lr:g}_c{c:g}", learning_rate=lr, l2=c) for lr in LEARNING_RATES for c in L2]
    decoupled = [
        sgd(f"sgdw_lr{lr:g}_lam{lam:g}", "sgdw", learning_rate=lr, weight_decay=lam / lr)
        for lr in LEARNING_RATES
        for lam in DECAY
    ]
    return tuple(plain + coupled + decoupled)


def get_config() -> SweepConfig:
    return SweepConfig(
        name="sgdw-vs-l2",
        description=__doc__.strip().splitlines()[2],
        variants=variants(),
        seeds=3,
    )
