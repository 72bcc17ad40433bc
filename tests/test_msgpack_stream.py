"""msgpack_stream.pieces and runfolder.write_checksummed: flax's checkpoint bytes, written piece by piece."""

from __future__ import annotations

import flax.serialization
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import fileio, msgpack_stream, runfolder


def joined(tree) -> bytes:
    return b"".join(bytes(p) for p in msgpack_stream.pieces(tree))


def tree_of_every_kind() -> dict:
    """Leaves on both sides of every size where msgpack's encodings change (64 KiB: ext/bin 16 -> 32)."""
    return {
        "z": 1,  # keys not in sorted order: flax sorts them
        "a": np.arange(100_000, dtype=np.float32).reshape(100, 1000),
        "layer": {
            "kernel": jnp.linspace(-1.0, 1.0, 300 * 300).reshape(300, 300),
            "exactly 64 KiB": np.ones((16_384,), np.float32),
            "just under": np.ones((16_383,), np.float32),
            "not contiguous": np.arange(200_000, dtype=np.float32).reshape(400, 500)[:, ::2],
            "bfloat16": np.ones((70_000,), jnp.bfloat16),
            "int8": np.arange(70_000).astype(np.int8),
            "empty": np.zeros((0, 5), np.float32),
            "scalar": np.float32(2.5),
            "jax scalar": jnp.array(3, jnp.int32),
        },
        "text": "x" * 70_000,
        "flags": {"true": True, "none": None, "float": 1.5},
        **{f"k{i}": i for i in range(20)},  # a map of more than 15 entries
    }


def test_pieces_join_to_flax_msgpack_serialize():
    tree = tree_of_every_kind()
    data = joined(tree)
    assert data == flax.serialization.msgpack_serialize(tree)
    back = flax.serialization.msgpack_restore(data)
    np.testing.assert_array_equal(back["layer"]["not contiguous"], tree["layer"]["not contiguous"])
    assert back["layer"]["bfloat16"].dtype == jnp.bfloat16


def test_large_arrays_are_views_not_copies():
    big = np.arange(1 << 16, dtype=np.float32)
    raw = [p for p in msgpack_stream.pieces({"w": big}) if isinstance(p, memoryview)]
    assert len(raw) == 1 and raw[0].nbytes == big.nbytes
    assert np.shares_memory(np.asarray(raw[0]), big)


def test_arrays_over_flax_chunk_size_are_chunked_as_flax_does(monkeypatch):
    monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 100_000)
    tree = {"w": np.arange(300_000, dtype=np.float32).reshape(3000, 100), "b": np.ones((3,), np.float32)}
    data = joined(tree)
    assert data == flax.serialization.msgpack_serialize(tree)
    np.testing.assert_array_equal(flax.serialization.msgpack_restore(data)["w"], tree["w"])


def test_object_arrays_are_refused():
    with pytest.raises(ValueError, match="dtype object"):
        joined({"w": np.array([object()] * 20_000, dtype=object)})


def test_write_checksummed_equals_with_checksum(tmp_path):
    tree = tree_of_every_kind()
    with fileio.atomic_file(tmp_path / "c.msgpack") as f:
        runfolder.write_checksummed(f, msgpack_stream.pieces(tree))
    data = (tmp_path / "c.msgpack").read_bytes()
    assert data == runfolder.with_checksum(flax.serialization.msgpack_serialize(tree))
    assert runfolder.verified(data) == joined(tree)


def test_a_failed_streamed_write_leaves_the_old_file(tmp_path):
    path = fileio.atomic_write(tmp_path / "c.msgpack", b"old")

    def failing():
        yield b"new"
        raise RuntimeError("serializing failed")

    with pytest.raises(RuntimeError, match="serializing failed"):
        with fileio.atomic_file(path) as f:
            runfolder.write_checksummed(f, failing())
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["c.msgpack"]
