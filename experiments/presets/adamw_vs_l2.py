"""python experiments/sweep.py --preset adamw-vs-l2

Adam with Keras' coupled L2 penalty against AdamW's decoupled decay, learning rate x strength grids, 16-unit model.

Loshchilov and Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), Figure 2: with the
L2 penalty in the loss, Adam divides its gradient 2cw by sqrt(v) like the data gradient, so the
best c moves with the learning rate (a diagonal good region); with decoupled decay it should not.
Both sides run optax's Adam (optimizer "adam", eps 1e-7) at each learning rate in LEARNING_RATES:
  adam_l2_*: Keras' penalty c * sum(w^2) on the hidden kernels, c in L2
  adamw_*:   w -= lam * w per step on the same kernels, lam in DECAY. The paper decouples lam from
             the learning rate too (x -= eta_t * (alpha * adam_step + lam * x), eta_t the schedule's
             multiplier, 1 here), while jaxreg's (and optax's) adamw multiplies its weight_decay by
             the learning rate: so weight_decay = lam / learning_rate gives the paper's lam.
plus an unregularized Adam per learning rate. Two programs (Adam with its penalty, AdamW), all
seeds in each.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
L2 = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # Keras' coupled penalty c
DECAY = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # the paper's per-step decay lam (weight_decay = lam / learning_rate)


def variants() -> tuple[VariantSpec, ...]:
    plain = [VariantSpec(f"adam_lr{lr:g}", optimizer="adam", learning_rate=lr) for lr in LEARNING_RATES]
    coupled = [
        VariantSpec(f"adam_l2_lr{lr:g}_c{c:g}", optimizer="adam", learning_rate=lr, l2=c)
        for lr in LEARNING_RATES
        for c in L2
    ]
    decoupled = [
        VariantSpec(f"adamw_lr{lr:g}_lam{lam:g}", optimizer="adamw", learning_rate=lr, weight_decay=lam / lr)
        for lr in LEARNING_RATES
        for lam in DECAY
    ]
    return tuple(plain + coupled + decoupled)


def get_config() -> SweepConfig:
    return SweepConfig(
        name="adamw-vs-l2",
        description=__doc__.strip().splitlines()[2],
        variants=variants(),
        seeds=3,
    )
