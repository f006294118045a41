"""The canonical record leaf and the Merkle tree over a batch (docs/proofs.md is the spec).

Anyone must be able to check a record against the chain without trusting the gateway, so this
module depends on nothing but a keccak-256 implementation (pycryptodome, which w3gate already
needs, or eth-hash as web3 installs it) and can be copied into a verifier as it is.

Rules, in short:

- leaf = keccak256(0x00 || device address (20) || signature r||s (64) || sha256(payload) (32)
  || receive time, ms since the Unix epoch, uint64 big-endian (8)): 125 bytes hashed.
- inner node = keccak256(0x01 || left || right), positional (left child first, not sorted).
  The prefixes keep a leaf from ever being read as an inner node (second-preimage defence).
- A level with an odd number of nodes promotes its last node unchanged to the next level (it is
  never paired with itself, so two different batches cannot share a root by duplication).
- A batch of one record has its leaf as root. An empty batch has no root.
- A proof is the list of siblings from the leaf up, skipping the levels where the node was
  promoted; checking it needs the leaf's index and the batch's record count, which the
  registry stores on chain next to the root.
"""
from __future__ import annotations

from collections.abc import Sequence

try:
    from Crypto.Hash import keccak as _keccak

    def keccak256(data: bytes) -> bytes:
        return _keccak.new(digest_bits=256, data=data).digest()
except ImportError:  # pragma: no cover - a verifier that has eth-hash but not pycryptodome
    from eth_hash.auto import keccak as keccak256  # type: ignore[assignment]

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32


def _address_bytes(device: bytes | str) -> bytes:
    raw = device if isinstance(device, bytes) else bytes.fromhex(device.removeprefix("0x").removeprefix("0X"))
    if len(raw) != 20:
        raise ValueError(f"a device address is 20 bytes, got {len(raw)}")
    return raw


def leaf_preimage(device: bytes | str, signature: bytes, payload_sha256: bytes, received_ms: int) -> bytes:
    """The 125 bytes a leaf hashes, for a third party comparing encodings byte for byte."""
    if len(signature) != 64:
        raise ValueError(f"a device signature is r||s, 64 bytes, got {len(signature)}")
    if len(payload_sha256) != 32:
        raise ValueError(f"a payload digest is 32 bytes, got {len(payload_sha256)}")
    if not 0 <= received_ms < 1 << 64:
        raise ValueError(f"receive time {received_ms} ms does not fit a uint64")
    return (LEAF_PREFIX + _address_bytes(device) + bytes(signature) + bytes(payload_sha256)
            + received_ms.to_bytes(8, "big"))


def leaf(device: bytes | str, signature: bytes, payload_sha256: bytes, received_ms: int) -> bytes:
    """The canonical digest of one record: which device signed what, with which signature, and
    when this gateway received it. ``signature`` is the 64 bytes exactly as the device sent them
    (a high-S signature is not normalized): the leaf commits to the evidence, not to a rewrite."""
    return keccak256(leaf_preimage(device, signature, payload_sha256, received_ms))


def node(left: bytes, right: bytes) -> bytes:
    return keccak256(NODE_PREFIX + left + right)


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    up = [node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        up.append(level[-1])
    return up


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first and the root (alone) last."""
    if not leaves:
        raise ValueError("an empty batch has no root")
    tree = [list(leaves)]
    while len(tree[-1]) > 1:
        tree.append(_next_level(tree[-1]))
    return tree


def root(leaves: Sequence[bytes]) -> bytes:
    """The batch root that goes on chain."""
    return levels(leaves)[-1][0]


def _path(tree: list[list[bytes]], index: int) -> list[bytes]:
    path: list[bytes] = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):  # otherwise this node was promoted: nothing to record
            path.append(level[sibling])
        index //= 2
    return path


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Siblings of ``leaves[index]`` from the bottom up (promoted levels contribute nothing)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of a batch of {len(leaves)}")
    return _path(levels(leaves), index)


def proofs(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """The proof of every leaf, building the tree once (a batch stores them all)."""
    tree = levels(leaves)
    return [_path(tree, i) for i in range(len(leaves))]


def verify(leaf: bytes, index: int, path: Sequence[bytes], root: bytes, count: int) -> bool:
    """True when ``leaf`` is record ``index`` of the ``count``-record batch whose root is ``root``.

    ``count`` fixes the tree's shape (where nodes were promoted); take it, like the root, from
    the registry's ``anchorOf(root)``, never from the party presenting the proof.
    """
    if not 0 <= index < count or len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    if any(len(p) != HASH_SIZE for p in path):
        return False
    siblings = iter(path)
    current, pos, width = leaf, index, count
    try:
        while width > 1:
            if pos % 2:
                current = node(next(siblings), current)
            elif pos + 1 < width:
                current = node(current, next(siblings))
            pos, width = pos // 2, (width + 1) // 2
    except StopIteration:
        return False
    if next(siblings, None) is not None:
        return False
    return current == root
