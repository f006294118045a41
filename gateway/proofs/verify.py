"""Check a w3gate proof file against the chain alone (docs/proofs.md, "The proof file").

Dependency-light on purpose, so a dApp backend or another gateway can copy it with merkle.py:
the standard library (urllib for JSON-RPC, hashlib, base64) plus a keccak-256. It trusts
nothing in the file but the record itself: the leaf is recomputed from the record's fields, the
root comes from folding the path, and the record count and the gateway come from the registry's
``anchorOf(root)``, read with a plain ``eth_call``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from dataclasses import dataclass

from gateway.proofs import merkle

ANCHOR_OF = merkle.keccak256(b"anchorOf(bytes32)")[:4]
FORMAT = "w3gate-proof/1"


@dataclass(frozen=True)
class OnChainAnchor:
    gateway: str  # 0x lowercase hex; all zeros when the root was never anchored
    sequence: int
    count: int
    first_ms: int
    last_ms: int
    anchored_at: int  # block timestamp, seconds

    @property
    def exists(self) -> bool:
        return int(self.gateway, 16) != 0


@dataclass(frozen=True)
class Verdict:
    """``ok`` with ``reason`` "valid", or not ok with the first check that failed:
    bad_format, payload_mismatch, leaf_mismatch, not_anchored, bad_path, wrong_gateway,
    time_out_of_range."""

    ok: bool
    reason: str
    detail: str = ""
    anchor: OnChainAnchor | None = None

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "detail": self.detail,
                "anchor": self.anchor.__dict__ if self.anchor else None}


def _hex(value: str, size: int | None = None) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x"))
    if size is not None and len(raw) != size:
        raise ValueError(f"{value!r} is not {size} bytes")
    return raw


def eth_call(rpc_url: str, to: str, data: bytes, *, timeout: float = 10.0) -> bytes:
    """One ``eth_call`` at the latest block over plain HTTP JSON-RPC."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_call",
                       "params": [{"to": to, "data": "0x" + data.hex()}, "latest"]}).encode()
    request = urllib.request.Request(rpc_url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RuntimeError(f"eth_call to {to}: {reply['error']}")
    return _hex(reply["result"])


def anchor_of(rpc_url: str, registry: str, root: bytes) -> OnChainAnchor:
    """The registry's ``anchorOf(root)``: six ABI words, decoded by hand."""
    out = eth_call(rpc_url, registry, ANCHOR_OF + root)
    if len(out) != 6 * 32:
        raise RuntimeError(f"anchorOf returned {len(out)} bytes, not 192: is {registry} a ProofRegistry?")
    words = [int.from_bytes(out[i:i + 32], "big") for i in range(0, 192, 32)]
    return OnChainAnchor("0x" + words[0].to_bytes(20, "big").hex(), *words[1:])


def record_leaf(record: dict) -> bytes:
    """The leaf from the record's fields; ``payload_sha256`` is recomputed from ``payload``."""
    return merkle.leaf(_hex(record["address"], 20), _hex(record["signature"], 64),
                       hashlib.sha256(base64.b64decode(record["payload"], validate=True)).digest(),
                       int(record["received_ms"]))


def check(proof: dict, anchor: OnChainAnchor, *, gateway: str | None = None) -> Verdict:
    """Every check but the chain read: ``anchor`` is what the chain says about ``proof["root"]``.
    ``gateway``: the gateway address the verifier expects (default: the one named in the file)."""
    try:
        if proof.get("format") != FORMAT:
            return Verdict(False, "bad_format", f"format is {proof.get('format')!r}, not {FORMAT!r}")
        record = proof["record"]
        root = _hex(proof["root"], 32)
        path = [_hex(p, 32) for p in proof["path"]]
        index = int(proof["index"])
        payload_sha256 = hashlib.sha256(base64.b64decode(record["payload"], validate=True)).hexdigest()
        leaf = record_leaf(record)
    except (KeyError, TypeError, ValueError) as e:
        return Verdict(False, "bad_format", f"{e.__class__.__name__}: {e}")
    if record.get("payload_sha256", payload_sha256).lower() != payload_sha256:
        return Verdict(False, "payload_mismatch", "the payload does not hash to the stated payload_sha256")
    if "leaf" in proof and _hex(proof["leaf"]) != leaf:
        return Verdict(False, "leaf_mismatch", "the record's fields do not hash to the stated leaf")
    if not anchor.exists:
        return Verdict(False, "not_anchored", f"root {proof['root']} is not anchored in this registry", anchor)
    if not merkle.verify(leaf, index, path, root, anchor.count):
        return Verdict(False, "bad_path", f"leaf {index} with this path does not fold to the root of a "
                                          f"{anchor.count}-record batch", anchor)
    expected = gateway or proof.get("gateway")
    if expected and expected.lower() != anchor.gateway.lower():
        return Verdict(False, "wrong_gateway", f"anchored by {anchor.gateway}, not {expected}", anchor)
    if not anchor.first_ms <= int(record["received_ms"]) <= anchor.last_ms:
        return Verdict(False, "time_out_of_range", f"received {record['received_ms']} ms is outside the batch's "
                                                   f"{anchor.first_ms}..{anchor.last_ms}", anchor)
    return Verdict(True, "valid", f"record {index} of batch {anchor.sequence} ({anchor.count} records) "
                                  f"anchored by {anchor.gateway}", anchor)


def verify_proof(proof: dict, rpc_url: str, registry: str, *, gateway: str | None = None) -> Verdict:
    """Check ``proof`` against the registry at ``registry`` on the chain behind ``rpc_url``.
    Network errors propagate (OSError, RuntimeError): "cannot tell" is not "invalid"."""
    try:
        root = _hex(proof["root"], 32)
    except (KeyError, TypeError, ValueError) as e:
        return Verdict(False, "bad_format", f"root: {e}")
    return check(proof, anchor_of(rpc_url, registry, root), gateway=gateway)
