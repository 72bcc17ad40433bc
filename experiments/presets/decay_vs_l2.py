"""python experiments/sweep.py --preset decay-vs-l2

Coupled L2 penalty vs decoupled weight decay, subgradient L1 vs proximal L1, at matched strengths, 16-unit model.

What each is (jaxreg.optim): `l2` adds c * sum(w^2) to the loss, so its gradient 2cw is divided
by RMSprop's sqrt(a) like the data gradient; `weight_decay` shrinks w by lr * wd * w after
RMSprop's scaling. `l1` adds c * sum|w| (gradient c * sign(w), also divided by sqrt(a), never
exactly zero); `l1_proximal` soft-thresholds by lr * c after each step (exact zeros).

"Matched" means: the same shrink per step for a typical kernel entry, while the penalty is
small next to the data gradient (then sqrt(a) is the data gradient's RMS, G). Per step,
  coupled L2:  |dw| = lr * 2c * |w| / G      decoupled:  |dw| = lr * wd * |w|   ->  wd = 2c / G
  coupled L1:  |dw| = lr * c / G             proximal:   |dw| = lr * c'         ->  c' = c / G
G: sqrt(a) of the first hidden kernel (160,000 of the 160,256 penalized entries) in the
unregularized model on IMDB (seed 0, 20 epochs; AMD EPYC Zen 3 CPU), as the root mean square
over its entries, sqrt(mean a): 0.95e-3 to 1.65e-3 after every epoch 1-20, 0.95e-3 to
1.35e-3 after epochs 3-5 (where the best validation loss lies). The RMS weights entries by their gradient,
so the frequent words that carry the fit set it; the median entry (a rarely-seen word) has
sqrt(a) = 2.6e-4 (1.3e-4 at epoch 20), and a first grid matched on it (G = 2.5e-4, 5x the
decay below) made every decoupled variant the stronger of its pair: a lower loss at epoch 20,
or underfitting (docs/findings.md).
With G = 1.25e-3:
  wd = 1,600 * c: l2 1e-4, 1e-3, 1e-2  <->  weight_decay 0.16, 1.6, 16
  c' =   800 * c: l1 1e-5, 1e-4        <->  l1_proximal 0.008, 0.08
The match is per entry only on average: coupled L2/L1 shrink rarely-seen words (small sqrt(a))
faster and frequent ones slower than their decoupled partner, and the second hidden kernel's
G is ~1.5e-2 (its 256 entries), so there the coupled penalty shrinks ~12x less than its matched
decay. A strong coupled penalty also enters a itself, which caps its step at ~lr per entry.
"""

from jaxreg.config import SweepConfig
from jaxreg.variants import VariantSpec

G = 1.25e-3  # RMSprop's typical sqrt(a) on the first hidden kernel (see the docstring)
L2 = (1e-4, 1e-3, 1e-2)
L1 = (1e-5, 1e-4)


def matched_weight_decay(l2: float) -> float:
    """The decoupled decay that shrinks a typical entry per step as much as the coupled L2 penalty l2."""
    return round(2 * l2 / G, 6)


def matched_l1_proximal(l1: float) -> float:
    """The proximal L1 strength whose threshold per step equals the coupled L1 penalty's typical step."""
    return round(l1 / G, 6)


def get_config() -> SweepConfig:
    mlp = dict(widths=(16, 16))
    return SweepConfig(
        name="decay-vs-l2",
        description=__doc__.strip().splitlines()[2],
        variants=(
            VariantSpec("original", **mlp),
            *(VariantSpec(f"l2_{c:g}", **mlp, l2=c) for c in L2),
            *(
                VariantSpec(f"weight_decay_{matched_weight_decay(c):g}", **mlp, weight_decay=matched_weight_decay(c))
                for c in L2
            ),
            *(VariantSpec(f"l1_{c:g}", **mlp, l1=c) for c in L1),
            *(
                VariantSpec(f"l1_proximal_{matched_l1_proximal(c):g}", **mlp, l1_proximal=matched_l1_proximal(c))
                for c in L1
            ),
        ),
    )
