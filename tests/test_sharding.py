"""Sharding the variant axis over devices changes nothing but where variants run.

JAX fixes its CPU device count when it initializes, so each run happens in a subprocess: one
with XLA_FLAGS=--xla_force_host_platform_device_count=4 trains 3 configs x 2 seeds on a
4-device mesh (the configs axis is padded with an inert copy to 4) and records how the state
is laid out; another, with one device, trains the same variants. Each saves its histories to
an .npz that the test compares: equal to float32 rounding (RTOL, ATOL), not bit for bit, as
the sharded program batches the variants differently.
"""

from __future__ import annotations

import textwrap

import chex
import pytest

from conftest import scripts_on_devices

pytestmark = [
    pytest.mark.numerics,  # rerun by .ci/run with XLA held to a second instruction set
    pytest.mark.process,  # JAX fixes its device count per process
]

# Measured on XLA:CPU, jax 0.10.2, AMD EPYC (Zen 3), AVX2: at most 1.0e-7 relative after 2 epochs;
# asserted with a margin.
RTOL, ATOL = 1e-6, 1e-7
N_DEVICES = 4

SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from jaxreg.data import synthetic_dataset
    from jaxreg.variants import BucketProgram, RunSettings, VariantSpec, plan, run, variant_mesh, with_seeds

    out, label = sys.argv[1], sys.argv[2]
    configs = [
        VariantSpec("wide_l2", (16, 16), l2=1e-3),
        VariantSpec("narrow_dropout", (6, 6), dropout_rate=0.3),
        VariantSpec("narrow_l1", (6, 6), l1=1e-3),
    ]
    vs = with_seeds(configs, [0, 1])
    dataset = synthetic_dataset(n_train=600, n_validation=300, num_words=500, seed=1)
    settings = RunSettings(epochs=2, batch_size=128, eval_batch_size=128)
    mesh = variant_mesh()

    (bucket,) = plan(vs)
    program = BucketProgram(bucket, dataset, settings, mesh)
    state, mask = program.init()
    layout = {
        "device_count": jax.device_count(),
        "mesh_devices": int(mesh.devices.size),
        "padded_configs": len(program.configs),
        "state": [
            [list(x.shape), len(x.sharding.device_set), str(x.sharding.spec), list(x.addressable_shards[0].data.shape)]
            for x in jax.tree.leaves(state.params)
        ],
        "mask_devices": [len(x.sharding.device_set) for x in jax.tree.leaves(mask)],
        "hp_devices": [len(x.sharding.device_set) for x in jax.tree.leaves(program.hp)],
        "state_spec_expected": str(P(None, "variant")),
        # the compiled epoch's ops that move data between devices (none: each device trains its own configs)
        "collectives": sorted(
            set(re.findall(
                r"\\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\(",
                jax.jit(program.epoch).lower(state, mask, program.train_batches(0)).compile().as_text(),
            ))
        ),
    }
    arrays = {}
    for (name, seed), h in run(vs, dataset, settings, mesh=mesh).history.items():
        for metric, values in h.items():
            arrays[f"{label}/{name}/{seed}/{metric}"] = values
    np.savez(out, layout=json.dumps(layout), **arrays)
    """
)


def _runs(tmp_path, *runs: tuple[str, int]):
    """(layout, histories) of SCRIPT for each (label, n_devices), the processes run at the same time."""
    done = []
    for layout, arrays in scripts_on_devices(tmp_path, SCRIPT, *[(label, n, label) for label, n in runs]):
        histories = {}
        for name, values in arrays.items():
            _, variant, seed, metric = name.split("/")
            histories.setdefault((variant, int(seed)), {})[metric] = values
        done.append((layout, histories))
    return done


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """(layout, histories) of the 4-device process; histories of a separate 1-device process (run at the same time)."""
    tmp = tmp_path_factory.mktemp("sharding")
    (layout, sharded), (single_layout, single) = _runs(tmp, ("sharded", N_DEVICES), ("single", 1))
    assert single_layout["device_count"] == 1
    return layout, {"sharded": sharded, "single": single}


def test_state_is_sharded_over_four_devices(sharded_run):
    layout, _ = sharded_run
    assert layout["device_count"] == N_DEVICES
    assert layout["mesh_devices"] == N_DEVICES
    assert layout["padded_configs"] == N_DEVICES, "3 configs padded to a multiple of 4"
    for shape, n_devices, spec, shard_shape in layout["state"]:
        assert shape[:2] == [2, N_DEVICES]  # [seeds, padded configs, ...]
        assert n_devices == N_DEVICES and spec == layout["state_spec_expected"]
        assert shard_shape == [2, 1, *shape[2:]], "each device holds one config of every seed"
    assert all(n == N_DEVICES for n in layout["mask_devices"] + layout["hp_devices"])


def test_each_device_trains_only_its_own_configs(sharded_run):
    """The sharded epoch moves nothing between devices: before shard_map, XLA replicated jaxreg's CPU kernels,
    so every device gathered every config's state and trained all of them (4 devices: 4x the memory)."""
    layout, _ = sharded_run
    assert layout["collectives"] == []


def test_sharded_equals_one_device(sharded_run):
    _, histories = sharded_run
    sharded, single = histories["sharded"], histories["single"]
    assert set(sharded) == set(single) == {(n, s) for n in ("wide_l2", "narrow_dropout", "narrow_l1") for s in (0, 1)}
    for key in single:
        chex.assert_tree_all_finite(single[key])
        chex.assert_shape(list(single[key].values()), (2,))
        chex.assert_trees_all_close(sharded[key], single[key], rtol=RTOL, atol=ATOL, custom_message=str(key))
