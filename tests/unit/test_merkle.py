"""The canonical record leaf and the batch Merkle tree (docs/proofs.md): checked against an
independent encoding (Solidity's abi.encodePacked via web3), pinned known answers, and a naive
recursive tree (RFC 6962's split at the largest power of two, which promoting the odd node is)."""
from __future__ import annotations

import hashlib

import pytest
from eth_hash.auto import keccak
from web3 import Web3

from gateway.proofs import merkle

DEVICE = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
SIGNATURE = bytes(range(64))
PAYLOAD_SHA256 = hashlib.sha256(b"w3gate").digest()
RECEIVED_MS = 1_767_225_600_123
SIZES = (1, 2, 3, 7, 1000)


def make_leaves(n: int) -> list[bytes]:
    return [merkle.leaf(DEVICE, SIGNATURE, hashlib.sha256(b"w3gate %d" % i).digest(), RECEIVED_MS + i)
            for i in range(n)]


def naive_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << (len(leaves) - 1).bit_length() - 1  # largest power of two below len(leaves)
    return keccak(b"\x01" + naive_root(leaves[:split]) + naive_root(leaves[split:]))


def naive_path(leaves: list[bytes], index: int) -> list[bytes]:
    if len(leaves) == 1:
        return []
    split = 1 << (len(leaves) - 1).bit_length() - 1
    if index < split:
        return naive_path(leaves[:split], index) + [naive_root(leaves[split:])]
    return naive_path(leaves[split:], index - split) + [naive_root(leaves[:split])]


def test_leaf_is_keccak_of_the_packed_fields_with_a_zero_prefix():
    expected = Web3.solidity_keccak(["bytes1", "address", "bytes", "bytes32", "uint64"],
                                    [b"\x00", DEVICE, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS])
    assert merkle.leaf(DEVICE, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS) == bytes(expected)


def test_leaf_preimage_layout_is_fixed_width_big_endian():
    pre = merkle.leaf_preimage(DEVICE, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS)
    assert len(pre) == 125
    assert pre[0:1] == b"\x00"
    assert pre[1:21] == bytes.fromhex(DEVICE[2:])
    assert pre[21:85] == SIGNATURE
    assert pre[85:117] == PAYLOAD_SHA256
    assert pre[117:125] == RECEIVED_MS.to_bytes(8, "big")


def test_device_may_be_given_as_raw_bytes_or_any_hex_case():
    raw = bytes.fromhex(DEVICE[2:])
    assert merkle.leaf(raw, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS) == merkle.leaf(
        DEVICE.lower(), SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS)


def test_known_answers_are_pinned():
    """If these change, every proof already anchored stops verifying: the encoding is frozen."""
    assert merkle.leaf(DEVICE, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS).hex() == \
        "85846a3b2566236c2e44851030b19a7d2f6d1bcc082681b85efad75fb1f0b995"
    assert merkle.root(make_leaves(3)).hex() == \
        "063be63dc89bd9defa2e79dccc45d3d0432ea691200bee045097bc66d3120476"


def test_inner_nodes_are_positional_with_a_one_prefix_and_the_odd_node_is_promoted():
    l0, l1, l2 = make_leaves(3)
    n01 = bytes(Web3.solidity_keccak(["bytes1", "bytes32", "bytes32"], [b"\x01", l0, l1]))
    assert merkle.node(l0, l1) == n01 != merkle.node(l1, l0)
    assert merkle.root([l0, l1, l2]) == bytes(Web3.solidity_keccak(["bytes1", "bytes32", "bytes32"], [b"\x01", n01, l2]))


@pytest.mark.parametrize("n", [*SIZES, *range(4, 34)])
def test_root_and_paths_match_the_naive_recursive_tree(n):
    leaves = make_leaves(n)
    assert merkle.root(leaves) == naive_root(leaves)
    for index in {0, n // 2, n - 1, *range(0, n, max(1, n // 7))}:
        assert merkle.proof(leaves, index) == naive_path(leaves, index)


@pytest.mark.parametrize("n", SIZES)
def test_every_record_of_a_batch_verifies(n):
    leaves = make_leaves(n)
    root = merkle.root(leaves)
    paths = merkle.proofs(leaves)
    assert all(merkle.verify(leaf, i, paths[i], root, n) for i, leaf in enumerate(leaves))
    for i in sorted({0, 1 % n, n // 2, n - 2 if n > 1 else 0, n - 1}):
        assert paths[i] == merkle.proof(leaves, i)


def test_a_batch_of_one_has_its_leaf_as_root_and_an_empty_path():
    (leaf,) = make_leaves(1)
    assert merkle.root([leaf]) == leaf
    assert merkle.proof([leaf], 0) == []
    assert merkle.verify(leaf, 0, [], leaf, 1)


@pytest.mark.parametrize("n", [2, 3, 7, 1000])
def test_tampering_with_anything_fails_verification(n):
    leaves = make_leaves(n)
    root = merkle.root(leaves)
    index = n - 1 if n < 7 else 5
    leaf, path = leaves[index], merkle.proof(leaves, index)
    flipped = lambda b: bytes([b[0] ^ 1]) + b[1:]  # noqa: E731

    assert merkle.verify(leaf, index, path, root, n)
    assert not merkle.verify(flipped(leaf), index, path, root, n)
    assert not merkle.verify(leaf, index, path, flipped(root), n)
    assert not merkle.verify(leaf, index ^ 1, path, root, n)
    assert not merkle.verify(leaf, index, [flipped(path[0]), *path[1:]], root, n)
    assert not merkle.verify(leaf, index, path[:-1], root, n)
    assert not merkle.verify(leaf, index, [*path, path[-1]], root, n)
    # A count that changes the tree's shape: the last record of n is promoted where n + 1 pairs it.
    assert not merkle.verify(leaves[-1], n - 1, merkle.proof(leaves, n - 1), root, n + 1)
    assert not merkle.verify(leaf, n, path, root, n)
    assert not merkle.verify(leaf, -1, path, root, n)
    assert not merkle.verify(leaf[:31], index, path, root, n)


def test_a_record_with_a_changed_field_gets_another_leaf():
    base = merkle.leaf(DEVICE, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS)
    assert merkle.leaf("0x" + "11" * 20, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS) != base
    assert merkle.leaf(DEVICE, SIGNATURE[:63] + b"\x00", PAYLOAD_SHA256, RECEIVED_MS) != base
    assert merkle.leaf(DEVICE, SIGNATURE, hashlib.sha256(b"w3gatf").digest(), RECEIVED_MS) != base
    assert merkle.leaf(DEVICE, SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS + 1) != base


def test_an_inner_node_cannot_pass_as_a_record_when_the_count_comes_from_the_chain():
    """The classic second preimage: [n01, n23] has the same root as [l0, l1, l2, l3]. The 0x00/0x01
    prefixes mean no record hashes to n01, and the anchored count (4) rejects the 2-leaf shape."""
    l0, l1, l2, l3 = make_leaves(4)
    n01, n23 = merkle.node(l0, l1), merkle.node(l2, l3)
    root = merkle.root([l0, l1, l2, l3])
    assert merkle.root([n01, n23]) == root
    assert not merkle.verify(n01, 0, [n23], root, 4)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        merkle.root([])
    with pytest.raises(IndexError):
        merkle.proof(make_leaves(3), 3)
    with pytest.raises(ValueError):
        merkle.leaf("0x1234", SIGNATURE, PAYLOAD_SHA256, RECEIVED_MS)
    with pytest.raises(ValueError):
        merkle.leaf(DEVICE, SIGNATURE + b"\x1b", PAYLOAD_SHA256, RECEIVED_MS)  # r||s||v is not r||s
    with pytest.raises(ValueError):
        merkle.leaf(DEVICE, SIGNATURE, PAYLOAD_SHA256[:31], RECEIVED_MS)
    with pytest.raises(ValueError):
        merkle.leaf(DEVICE, SIGNATURE, PAYLOAD_SHA256, 1 << 64)
    with pytest.raises(ValueError):
        merkle.leaf(DEVICE, SIGNATURE, PAYLOAD_SHA256, -1)
