"""flax's msgpack bytes of a tree, as a sequence of pieces that refer to the arrays instead of copying them.

`flax.serialization.msgpack_serialize` builds the whole file in memory, and on the way copies
each array two or three times (`np.array`, `tobytes`, the inner and the outer msgpack buffer):
for the book preset's checkpoint (~135 MB) that was 250-350 MB more resident memory while a
checkpoint was serialized, next to a training epoch's buffers. `pieces(tree)` yields the same
bytes, in order, as small headers and zero-copy views of the arrays' memory, for a caller to
hash and write one after the other; `b"".join(pieces(tree)) == msgpack_serialize(tree)` (tests).
`flax.serialization.msgpack_restore` reads them back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import flax.serialization
import jax
import msgpack
import numpy as np

_NDARRAY_EXT = 1  # flax.serialization._MsgpackExtType.ndarray
_SMALL = 1 << 16  # arrays under 64 KiB are packed by flax itself (a copy that size costs nothing)


def pieces(tree) -> Iterator[bytes | memoryview]:
    """The bytes of `flax.serialization.msgpack_serialize(tree)`, in pieces; large arrays are not copied.

    tree: nested dicts with string keys (as `flax.serialization.to_state_dict` makes) whose
    leaves are arrays or msgpack scalars. An array's memory is read when its piece is
    consumed, so the arrays must not change until the pieces are written."""
    yield from _pieces(tree, sort=True)


def _pieces(tree, sort: bool) -> Iterator[bytes | memoryview]:
    """sort: the tree's dicts in sorted key order (msgpack_serialize's copy of the tree, jax.tree.map,
    sorts them); a chunked array's dicts are made after that copy and keep their order."""
    if type(tree) is dict:
        yield msgpack.Packer().pack_map_header(len(tree))
        for key in sorted(tree) if sort else tree:
            yield msgpack.packb(key, strict_types=True)
            yield from _pieces(tree[key], sort)
    elif isinstance(tree, (np.ndarray, jax.Array)) and _nbytes(tree) > flax.serialization.MAX_CHUNK_SIZE:
        yield from _pieces(_chunked(np.asarray(tree)), sort=False)
    elif isinstance(tree, (np.ndarray, jax.Array)) and _nbytes(tree) >= _SMALL:
        yield from _large_array(np.asarray(tree))
    else:  # scalars, strings, small arrays: flax's own encoding of that leaf
        yield flax.serialization.msgpack_serialize(tree)


def _nbytes(x) -> int:
    return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def _chunked(arr: np.ndarray) -> dict:
    """flax's form of an array over MAX_CHUNK_SIZE (flax.serialization._chunk): views of its flat data."""
    chunk = max(1, int(flax.serialization.MAX_CHUNK_SIZE / arr.dtype.itemsize))
    flat = arr.reshape(-1)
    parts = [flat[i : i + chunk] for i in range(0, flat.size, chunk)]
    return {
        "__msgpack_chunked_array__": True,
        "shape": {str(i): d for i, d in enumerate(arr.shape)},
        "chunks": {str(i): p for i, p in enumerate(parts)},
    }


def _large_array(arr: np.ndarray) -> Iterator[bytes | memoryview]:
    """ExtType(ndarray, packb((shape, dtype name, raw C-order bytes))) with the raw bytes as a view (>= 64 KiB)."""
    if arr.dtype.hasobject or arr.dtype.isalignedstruct:
        raise ValueError(
            f"cannot serialize an array of dtype {arr.dtype}: object and structured dtypes are not supported"
        )
    arr = np.ascontiguousarray(arr)  # a copy only when not C-contiguous already
    raw = memoryview(arr.reshape(-1).view(np.uint8))
    head = b"\x93" + msgpack.packb(arr.shape, use_bin_type=True) + msgpack.packb(arr.dtype.name, use_bin_type=True)
    head += b"\xc6" + struct.pack(">I", raw.nbytes)  # bin 32: raw.nbytes >= 64 KiB
    yield b"\xc9" + struct.pack(">Ib", len(head) + raw.nbytes, _NDARRAY_EXT) + head  # ext 32
    yield raw
