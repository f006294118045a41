"""A second verifier, written only from docs/proofs.md, as a third party would write it.

It shares no code with w3gate (no import from gateway/, rig/ or hardware/): the protobuf fields
are read by hand, the G1 nibbles swapped back by hand, the tree built recursively the RFC 6962
way (the doc says the shape is RFC 6962's) rather than level by level as gateway/proofs/merkle.py
does, and the chain read with raw JSON-RPC over urllib. Where it agrees with the gateway, the
doc was enough; where it does not, the doc is wrong or incomplete. Only the keccak-256 primitive
is borrowed (pycryptodome), because the doc names it and it is not the thing under test.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import urllib.request
from collections.abc import Iterator, Sequence

from Crypto.Hash import keccak as _keccak


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (not NIST SHA3-256), as the doc insists."""
    return _keccak.new(digest_bits=256, data=data).digest()


# -- the four leaf fields, from a record (docs/proofs.md "From a buffered record to its leaf") --

def received_ms(rx: float) -> int:
    """Receive time in whole ms, rounded half up in doubles: floor(rx * 1000 + 0.5)."""
    return math.floor(rx * 1000 + 0.5)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def protobuf_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field in order: varints as ints, length-delimited as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            yield number, data[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"wire type {wire_type} does not occur in Pebble messages")


def unswap(text: str) -> str:
    """G1 hex: the two digits of every byte are printed swapped ("59" is the byte 0x95)."""
    return "".join(text[i + 1] + text[i] for i in range(0, len(text), 2))


def signature_from_payload(wire: str, kind: str, payload: bytes, attestation: str | None = None) -> bytes:
    """The leaf's 64 signature bytes, derived per wire as the doc's table says."""
    if wire == "protobuf":
        field = 3 if kind == "confirm" else 4  # ConfirmPackage.signature, else BinPackage.signature
        found = [v for n, v in protobuf_fields(payload) if n == field]
        signature = found[-1]  # protobuf: the last occurrence counts
    elif wire == "json":
        envelope = json.loads(payload.decode("utf-8"))
        signature = (bytes.fromhex(unswap(envelope["signature"]["r"]))
                     + bytes.fromhex(unswap(envelope["signature"]["s"])))
    elif wire == "legacy":
        signature = bytes.fromhex(attestation or "")[:64]
    else:
        raise ValueError(f"the doc names no wire {wire!r}")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise ValueError(f"a {wire} {kind} signature is not 64 bytes")
    return signature


def leaf_preimage(address: str, signature: bytes, payload_sha256: bytes, ms: int) -> bytes:
    """The 125 bytes: 0x00, address (20), r||s (64), sha256(payload) (32), uint64be ms."""
    raw_address = bytes.fromhex(address[2:] if address[:2] in ("0x", "0X") else address)
    assert len(raw_address) == 20 and len(signature) == 64 and len(payload_sha256) == 32
    return b"\x00" + raw_address + signature + payload_sha256 + struct.pack(">Q", ms)


def leaf(address: str, signature: bytes, payload_sha256: bytes, ms: int) -> bytes:
    return keccak256(leaf_preimage(address, signature, payload_sha256, ms))


def record_leaf(row: dict) -> bytes:
    """The leaf of one `w3gate records --json` row, from its exported fields, after checking
    them against what the doc says to derive from the payload itself."""
    wire = row.get("wire") or "protobuf"
    payload = base64.b64decode(row["payload"])
    derived = signature_from_payload(wire, row["kind"], payload, row.get("attestation"))
    if row["signature"] != derived.hex():
        raise AssertionError(f"record {row['seq']}: exported signature {row['signature']} is not the "
                             f"{wire} signature the doc derives, {derived.hex()}")
    digest = hashlib.sha256(payload).digest()
    if row["payload_sha256"] != digest.hex():
        raise AssertionError(f"record {row['seq']}: payload_sha256 is not sha256(payload)")
    if row["received_ms"] != received_ms(row["rx"]):
        raise AssertionError(f"record {row['seq']}: received_ms {row['received_ms']} is not rx {row['rx']} in ms")
    return leaf(row["address"], derived, digest, row["received_ms"])


# -- the tree (docs/proofs.md "The tree", "A proof and its check") --------------------------------

def node(left: bytes, right: bytes) -> bytes:
    return keccak256(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): RFC 6962's left subtree size."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        raise ValueError("no empty batches")
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node(root(leaves[:k]), root(leaves[k:]))


def path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Siblings from the leaf up (RFC 6962's audit path, which skips the promoted levels)."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return path(leaves[:k], index) + [root(leaves[k:])]
    return path(leaves[k:], index - k) + [root(leaves[:k])]


def verify(leaf_hash: bytes, index: int, siblings: Sequence[bytes], root_hash: bytes, count: int) -> bool:
    """The doc's pseudo-code, line for line."""
    if not 0 <= index < count:
        return False
    it = iter(siblings)
    current, pos, width = leaf_hash, index, count
    try:
        while width > 1:
            if pos % 2 == 1:
                current = node(next(it), current)
            elif pos + 1 < width:
                current = node(current, next(it))
            pos, width = pos // 2, -(-width // 2)
    except StopIteration:
        return False
    if next(it, None) is not None:
        return False
    return current == root_hash


# -- the chain, by raw JSON-RPC (docs/proofs.md "The contract") -----------------------------------

ANCHORED_TOPIC = keccak256(b"Anchored(address,bytes32,uint64,uint32,uint48,uint48)")
ANCHOR_OF = keccak256(b"anchorOf(bytes32)")[:4]


def rpc(url: str, method: str, params: list) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def _words(hex_data: str) -> list[int]:
    raw = bytes.fromhex(hex_data[2:])
    return [int.from_bytes(raw[i:i + 32], "big") for i in range(0, len(raw), 32)]


def _address(word: int) -> str:
    return "0x" + word.to_bytes(32, "big")[12:].hex()


def anchor_of(url: str, registry: str, root_hash: bytes) -> dict:
    """``anchorOf(root)``: gateway (lower-case hex), sequence, count, first/last ms, anchoredAt."""
    result = rpc(url, "eth_call", [{"to": registry, "data": "0x" + (ANCHOR_OF + root_hash).hex()}, "latest"])
    gateway, sequence, count, first, last, at = _words(result)
    return {"gateway": _address(gateway), "sequence": sequence, "count": count, "first_ms": first,
            "last_ms": last, "anchored_at": at}


def anchored_events(url: str, registry: str) -> list[dict]:
    """Every ``Anchored`` event of the registry, in chain order."""
    logs = rpc(url, "eth_getLogs", [{"address": registry, "fromBlock": "0x0", "toBlock": "latest",
                                     "topics": ["0x" + ANCHORED_TOPIC.hex()]}])
    events = []
    for log in logs:
        sequence, count, first, last = _words(log["data"])
        events.append({"gateway": _address(int(log["topics"][1], 16)), "root": bytes.fromhex(log["topics"][2][2:]),
                       "sequence": sequence, "count": count, "first_ms": first, "last_ms": last,
                       "block": int(log["blockNumber"], 16)})
    return events


# -- the worked vectors' text format (docs/proofs.md "Worked vectors") ----------------------------

def parse_blocks(markdown: str) -> list[dict[str, list[str]]]:
    """Every fenced block of `name value` lines: each name with its value's lines (a value
    continues on lines that start with spaces)."""
    blocks: list[dict[str, list[str]]] = []
    inside, current, last = False, {}, None
    for line in markdown.splitlines():
        if line.startswith("```"):
            if inside and current:
                blocks.append(current)
            inside, current, last = not inside, {}, None
            continue
        if not inside or not line.strip():
            continue
        if line[0] == " " and last is not None:
            current[last].append(line.strip())
        else:
            name, _, value = line.partition(" ")
            last = name
            current[name] = [value.strip()]
    return blocks
