"""Check a w3gate proof file against the chain alone (docs/proofs.md, "Verifying a proof").

The rule is that the verifier proves what it prints: every field of the file is either checked
(recomputed from the record, read back from the payload, or compared with what the chain says:
``anchorOf(root)``, the root's ``Anchored`` event, the gateway's ``GatewayAdded`` /
``GatewayRemoved`` history) and listed under ``proven``, or listed under ``not_proven`` with why
nothing commits to it. A field that is checked and differs makes the proof invalid, with a reason.

Three outcomes: valid, invalid (with the first failing check's reason), and "cannot tell"
(``CannotTell``: the chain could not be reached or would not answer). A chain that answers that
there is no contract at the registry address has answered: that is invalid (``no_registry``).

It talks plain JSON-RPC over urllib so a dApp backend can read it as a reference; it reads
payloads with the gateway's codecs (gateway/codec/record.py) to find the signature inside them.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import W3gateError
from gateway.proofs import merkle

ANCHOR_OF = merkle.keccak256(b"anchorOf(bytes32)")[:4]
ANCHORED_TOPIC = "0x" + merkle.keccak256(b"Anchored(address,bytes32,uint64,uint32,uint48,uint48)").hex()
ADDED_TOPIC = "0x" + merkle.keccak256(b"GatewayAdded(address,uint32)").hex()
REMOVED_TOPIC = "0x" + merkle.keccak256(b"GatewayRemoved(address)").hex()
FORMAT = "w3gate-proof/1"

# Why a field is not proven: nothing in the leaf, the payload or the chain commits to it.
WHY_SEQ = "the gateway's own record id: nothing on chain commits to it; consistent with index and batch range"
WHY_IMEI = "the device's IMEI as the gateway registered it: the leaf commits to the address, not the IMEI"
WHY_RANGE = "the gateway's record ids: nothing on chain commits to them; consistent with seq, index and count"
WHY_NO_ANCHOR = "the file was made before its anchor was confirmed: the chain's anchor is under anchor.*"
WHY_OFFLINE = "the chain's events were not read (offline check)"
WHY_UNKNOWN = "not a field of w3gate-proof/1"


class CannotTell(W3gateError):
    """The chain could not be asked (unreachable, or an RPC error): neither valid nor invalid."""

    reason = "cannot_tell"


class _RpcError(RuntimeError):
    """A JSON-RPC error answer: the chain answered, but refused the request."""


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
class AnchorEvent:
    """The root's ``Anchored`` event as the chain holds it."""

    gateway: str
    sequence: int
    count: int
    first_ms: int
    last_ms: int
    tx: str
    block: int
    log_index: int
    block_time: int  # the block's timestamp, seconds


@dataclass(frozen=True)
class ChainFacts:
    """What the chain says beyond ``anchorOf``: read by ``verify_proof``, judged by ``check``."""

    chain_id: int
    registry: str
    head: int
    event: AnchorEvent | None  # None: no Anchored event found for the root
    # the anchoring gateway's history, in chain order: ("added" | "removed", block, log index)
    registration: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class Verdict:
    """``ok`` with ``reason`` "valid", or not ok with the first failing check's reason (see
    REASONS). ``proven`` and ``not_proven`` are keyed by the file's field paths (``record.rx``,
    ``batch.count``, ``anchor.tx``) plus facts read from the chain (``gateway.registration``)."""

    ok: bool
    reason: str
    detail: str = ""
    anchor: OnChainAnchor | None = None
    proven: dict = field(default_factory=dict)
    not_proven: dict = field(default_factory=dict)  # path -> {"value": ..., "why": ...}
    notes: tuple[str, ...] = ()  # facts a reader must see even when valid (a removed gateway)

    def to_dict(self) -> dict:
        return {"valid": self.ok, "reason": self.reason, "detail": self.detail, "notes": list(self.notes),
                "proven": self.proven, "not_proven": self.not_proven}


REASONS = {
    "bad_format": "the file is not a w3gate-proof/1 proof",
    "payload_mismatch": "the payload does not hash to payload_sha256",
    "leaf_mismatch": "the record's fields do not hash to the stated leaf",
    "no_registry": "no ProofRegistry at the registry address",
    "not_anchored": "the root is not anchored in the registry",
    "bad_path": "the leaf and path do not fold to the root with the on-chain count",
    "no_gateway": "the file names no gateway and none was expected (--gateway / --any-gateway)",
    "wrong_gateway": "the root was anchored by another gateway",
    "time_out_of_range": "received_ms is outside the batch's on-chain time range",
    "rx_mismatch": "rx does not round to received_ms",
    "signature_mismatch": "the record's signature is not the one in (or over) the payload",
    "kind_mismatch": "the payload is not of the record's kind or wire",
    "device_mismatch": "the record's device is not the one in the payload",
    "device_did_mismatch": "device_did is not the DID of the leaf's address",
    "gateway_did_mismatch": "gateway_did is not the DID of the anchoring gateway",
    "batch_mismatch": "a batch field differs from the chain (sequence, count, time range)",
    "seq_mismatch": "record seq, index and the batch's record range disagree",
    "chain_mismatch": "the file's chain_id is not the chain's",
    "registry_mismatch": "the file's registry is not the one asked",
    "tx_mismatch": "the anchor's tx is not the transaction that anchored the root",
    "block_mismatch": "the anchor's block is not the block that anchored the root",
    "event_mismatch": "the chain's Anchored event disagrees with anchorOf",
    "not_registered": "the gateway was not registered when the anchor was made",
}


def did_of(address: str) -> str:
    return "did:io:0x" + address.lower().removeprefix("0x")


def _hex(value: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a hex string")
    raw = bytes.fromhex(value.removeprefix("0x"))
    if size is not None and len(raw) != size:
        raise ValueError(f"{value!r} is not {size} bytes")
    return raw


def _same_hex(a: Any, b: str) -> bool:
    return isinstance(a, str) and a.lower().removeprefix("0x") == b.lower().removeprefix("0x")


# -- the chain -----------------------------------------------------------------------------------

def rpc(rpc_url: str, method: str, *params: Any, timeout: float = 10.0) -> Any:
    """One JSON-RPC call. Unreachable → CannotTell; an error answer → _RpcError."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(rpc_url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, non-JSON answers
        raise CannotTell(f"{rpc_url}: {method}: {e}", reason="chain_unreachable") from None
    if not isinstance(reply, dict):
        raise CannotTell(f"{rpc_url}: {method}: not a JSON-RPC answer", reason="chain_unreachable")
    if "error" in reply:
        raise _RpcError(f"{method}: {reply['error']}")
    return reply.get("result")


def eth_call(rpc_url: str, to: str, data: bytes, *, timeout: float = 10.0) -> bytes:
    """One ``eth_call`` at the latest block."""
    return _hex(rpc(rpc_url, "eth_call", {"to": to, "data": "0x" + data.hex()}, "latest", timeout=timeout))


def _decode_anchor(out: bytes) -> OnChainAnchor:
    words = [int.from_bytes(out[i:i + 32], "big") for i in range(0, 192, 32)]
    return OnChainAnchor("0x" + words[0].to_bytes(20, "big").hex(), *words[1:])


def anchor_of(rpc_url: str, registry: str, root: bytes) -> OnChainAnchor:
    """The registry's ``anchorOf(root)``: six ABI words, decoded by hand."""
    out = eth_call(rpc_url, registry, ANCHOR_OF + root)
    if len(out) != 6 * 32:
        raise RuntimeError(f"anchorOf returned {len(out)} bytes, not 192: is {registry} a ProofRegistry?")
    return _decode_anchor(out)


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _block_time(rpc_url: str, number: int) -> int:
    block = rpc(rpc_url, "eth_getBlockByNumber", hex(number), False)
    if not block:
        raise CannotTell(f"block {number} is not served by {rpc_url}", reason="chain_unreachable")
    return _int(block["timestamp"])


def _blocks_at(rpc_url: str, timestamp: int, head: int) -> tuple[int, int]:
    """The first and last block whose timestamp is ``timestamp`` (binary search: an anchor's
    block is found from ``anchoredAt`` alone, without scanning the chain's logs)."""
    def first_at_least(t: int) -> int:
        lo, hi = 0, head + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if _block_time(rpc_url, mid) >= t:
                hi = mid
            else:
                lo = mid + 1
        return lo
    return first_at_least(timestamp), first_at_least(timestamp + 1) - 1


def _logs(rpc_url: str, registry: str, topics: list, start: int, end: int) -> list[dict]:
    try:
        return rpc(rpc_url, "eth_getLogs", {"address": registry, "fromBlock": hex(start), "toBlock": hex(end),
                                            "topics": topics}) or []
    except _RpcError as e:
        raise CannotTell(f"{rpc_url} refused eth_getLogs over blocks {start}..{end}: {e}",
                         reason="rpc_error") from None


def _word(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


def anchored_event(rpc_url: str, registry: str, root: bytes, anchor: OnChainAnchor, head: int) -> AnchorEvent | None:
    """The root's ``Anchored`` event, looked for in the blocks stamped ``anchor.anchored_at``."""
    start, end = _blocks_at(rpc_url, anchor.anchored_at, head)
    if start > end:
        return None
    logs = _logs(rpc_url, registry, [ANCHORED_TOPIC, None, "0x" + root.hex()], start, end)
    logs = [entry for entry in logs if not entry.get("removed")]
    if not logs:
        return None
    entry = logs[0]
    data = _hex(entry["data"])
    words = [int.from_bytes(data[i:i + 32], "big") for i in range(0, 128, 32)]
    block = _int(entry["blockNumber"])
    return AnchorEvent("0x" + _hex(entry["topics"][1])[12:].hex(), *words, tx=entry["transactionHash"].lower(),
                       block=block, log_index=_int(entry["logIndex"]), block_time=_block_time(rpc_url, block))


def registration_history(rpc_url: str, registry: str, gateway: str, head: int) -> tuple[tuple[str, int, int], ...]:
    """Every GatewayAdded / GatewayRemoved of ``gateway``, in chain order."""
    logs = _logs(rpc_url, registry, [[ADDED_TOPIC, REMOVED_TOPIC], _word(gateway)], 0, head)
    events = [("added" if entry["topics"][0].lower() == ADDED_TOPIC else "removed",
               _int(entry["blockNumber"]), _int(entry["logIndex"])) for entry in logs if not entry.get("removed")]
    return tuple(sorted(events, key=lambda e: (e[1], e[2])))


# -- the checks ----------------------------------------------------------------------------------

def record_leaf(record: dict) -> bytes:
    """The leaf from the record's fields; ``payload_sha256`` is recomputed from ``payload``."""
    return merkle.leaf(_hex(record["address"], 20), _hex(record["signature"], 64),
                       hashlib.sha256(base64.b64decode(record["payload"], validate=True)).digest(),
                       int(record["received_ms"]))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """The file's fields by path (``record.rx``); lists (``path``) count as one field."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {}


def payload_facts(record: dict, received: int) -> tuple[str | None, str]:
    """Read the payload as the record's wire and check what the record says about it: the
    signature inside it (for a legacy frame: the gateway's attestation over it), its kind and,
    for a legacy frame, the device id in its header. Returns (failing reason or None, detail);
    the detail names the wire on success."""
    from device_fw import frame as legacy_frame
    from gateway.codec.record import WIRES, Record

    kind = record.get("kind")
    wires = [record["wire"]] if record.get("wire") else ["protobuf", "json", "legacy"]
    signature = _hex(record["signature"], 64)
    problems = []
    for name in wires:
        if name not in WIRES:
            return "kind_mismatch", f"unknown wire {name!r}"
        wire = WIRES[name]
        kinds = [kind] if kind else list(wire.events)
        for k in kinds:
            if k not in wire.events:
                problems.append(f"a {name} record is never of kind {k!r}")
                continue
            doc = {"wire": name, "kind": k, "payload": record["payload"]}
            try:
                message = Record(doc).message
                if name == "protobuf" and k != "confirm":
                    from gateway.codec.pebble import PackageType
                    if message.type != {"data": PackageType.DATA, "config": PackageType.CONFIG}[k]:
                        raise ValueError(f"a BinPackage of type {message.type}, not {k}")
                if name == "legacy":
                    frame_type, device_id, _, _ = legacy_frame.parse(Record(doc).payload)
                    from gateway.legacy.verifier import FRAME_KINDS
                    if FRAME_KINDS.get(frame_type) != k:
                        raise ValueError(f"a legacy frame of type {frame_type}, not {k}")
            except (W3gateError, ValueError, legacy_frame.FrameError) as e:
                problems.append(f"as {name} {k}: {e}")
                continue
            if name == "legacy":
                if "device" in record and str(record["device"]).lower() != device_id.hex():
                    return "device_mismatch", f"the frame is from device {device_id.hex()}, not {record['device']}"
                reason = _attestation(record, signature, received)
                if reason:
                    return "signature_mismatch", reason
                return None, f"{name} {k}"
            if bytes(message.signature) != signature:
                return "signature_mismatch", (f"the payload carries signature {bytes(message.signature).hex()}, "
                                              f"not the record's {signature.hex()}")
            return None, f"{name} {k}"
    return "kind_mismatch", "the payload does not read as the record says: " + "; ".join(problems)


def _attestation(record: dict, signature: bytes, received: int) -> str | None:
    """A legacy record's signature is the gateway's attestation of the payload and receive time
    (docs/proofs.md): it must recover to the record's address (the attester)."""
    from gateway.legacy.attest import attestation_digest
    from gateway.verify.secp256k1 import recover

    digest = attestation_digest(hashlib.sha256(base64.b64decode(record["payload"])).digest(), received)
    if any(key.address.lower() == record["address"].lower() for _, key in recover(digest, signature)):
        return None
    return f"the signature is not {record['address']}'s attestation of this payload at {received} ms"


def check(proof: dict, anchor: OnChainAnchor, *, gateway: str | None = None, any_gateway: bool = False,
          chain: ChainFacts | None = None) -> Verdict:
    """Every check of ``proof`` given what the chain says: ``anchor`` is ``anchorOf(root)``,
    ``chain`` the rest (None: an offline check, the chain's events are then not proven).
    ``gateway``: the gateway address the verifier expects (default: the one the file names);
    ``any_gateway``: accept whichever gateway anchored the root when neither names one."""
    proven: dict[str, Any] = {}
    fields = _flatten(proof)

    def verdict(ok: bool, reason: str, detail: str, notes: tuple[str, ...] = ()) -> Verdict:
        not_proven = {path: {"value": value, "why": why(path)} for path, value in fields.items()
                      if path not in proven} if ok else {}
        return Verdict(ok, reason, detail, anchor, dict(proven), not_proven, notes)

    def why(path: str) -> str:
        if chain is None and (path in ("chain_id", "registry") or path.startswith("anchor")):
            return WHY_OFFLINE
        return {"record.seq": WHY_SEQ, "record.device": WHY_IMEI, "batch.first_seq": WHY_RANGE,
                "batch.last_seq": WHY_RANGE, "anchor": WHY_NO_ANCHOR}.get(path, WHY_UNKNOWN)

    def fail(reason: str, detail: str) -> Verdict:
        return verdict(False, reason, detail)

    try:
        if proof.get("format") != FORMAT:
            return fail("bad_format", f"format is {proof.get('format')!r}, not {FORMAT!r}")
        record = proof["record"]
        root = _hex(proof["root"], 32)
        path = [_hex(p, 32) for p in proof["path"]]
        index = proof["index"]
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"index {index!r} is not an integer")
        received = record["received_ms"]
        if not isinstance(received, int) or isinstance(received, bool):
            raise ValueError(f"received_ms {received!r} is not an integer")
        for key in ("kind", "wire", "device", "device_did"):
            if key in record and not isinstance(record[key], str):
                raise ValueError(f"record.{key} {record[key]!r} is not a string")
        payload_sha256 = hashlib.sha256(base64.b64decode(record["payload"], validate=True)).hexdigest()
        leaf = record_leaf(record)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return fail("bad_format", f"{e.__class__.__name__}: {e}")
    proven["format"] = FORMAT
    if "payload_sha256" in record and not _same_hex(record["payload_sha256"], payload_sha256):
        return fail("payload_mismatch", "the payload does not hash to the stated payload_sha256")
    if "leaf" in proof and not _same_hex(proof["leaf"], leaf.hex()):
        return fail("leaf_mismatch", "the record's fields do not hash to the stated leaf")
    if not anchor.exists:
        return fail("not_anchored", f"root {proof['root']} is not anchored in this registry")
    if not merkle.verify(leaf, index, path, root, anchor.count):
        return fail("bad_path", f"leaf {index} with this path does not fold to the root of a "
                                f"{anchor.count}-record batch")
    proven.update({"record.payload": record["payload"], "record.payload_sha256": payload_sha256,
                   "record.address": record["address"], "record.signature": record["signature"],
                   "record.received_ms": received, "leaf": "0x" + leaf.hex(), "index": index,
                   "path": proof["path"], "root": proof["root"], "batch.count": anchor.count})
    expected = gateway or proof.get("gateway")
    if not expected and not any_gateway:
        return fail("no_gateway", f"the file names no gateway and none is expected: give --gateway ADDRESS "
                                  f"(the root was anchored by {anchor.gateway}) or --any-gateway")
    if expected and not _same_hex(expected, anchor.gateway):
        return fail("wrong_gateway", f"anchored by {anchor.gateway}, not {expected}")
    proven["gateway"] = anchor.gateway
    if not anchor.first_ms <= received <= anchor.last_ms:
        return fail("time_out_of_range", f"received {received} ms is outside the batch's "
                                         f"{anchor.first_ms}..{anchor.last_ms}")

    # what the file says about the record beyond the leaf: tied to the leaf or the payload
    if "rx" in record:
        rx = record["rx"]
        if not isinstance(rx, (int, float)) or isinstance(rx, bool) or not math.isfinite(rx) \
                or math.floor(rx * 1000 + 0.5) != received:
            return fail("rx_mismatch", f"rx {rx!r} does not round to received_ms {received} "
                                       "(floor(rx * 1000 + 0.5))")
        proven["record.rx"] = rx
    reason, detail = payload_facts(record, received)
    if reason:
        return fail(reason, detail)
    proven.update({"record.signature": record["signature"], "payload.reads_as": detail})
    for key in ("kind", "wire"):
        if key in record:
            proven[f"record.{key}"] = record[key]
    if record.get("wire") == "legacy" and "device" in record:
        proven["record.device"] = record["device"]
    if "device_did" in record:
        if record["device_did"] != did_of(record["address"]):
            return fail("device_did_mismatch", f"device_did {record['device_did']} is not the DID of the leaf's "
                                               f"address {record['address']} ({did_of(record['address'])})")
        proven["record.device_did"] = record["device_did"]
    if proof.get("gateway_did") is not None:
        if proof["gateway_did"] != did_of(anchor.gateway):
            return fail("gateway_did_mismatch", f"gateway_did {proof['gateway_did']} is not the DID of the "
                                                f"anchoring gateway {anchor.gateway}")
        proven["gateway_did"] = proof["gateway_did"]

    # the batch: its chain-held fields, and the file's record numbering must agree with itself
    batch = proof.get("batch") or {}
    on_chain = {"sequence": anchor.sequence, "count": anchor.count, "first_ms": anchor.first_ms,
                "last_ms": anchor.last_ms}
    for key, value in on_chain.items():
        if key in batch:
            if batch[key] != value:
                return fail("batch_mismatch", f"batch.{key} is {batch[key]!r}, the chain says {value}")
            proven[f"batch.{key}"] = value
    seqs = {k: v for k, v in (("seq", record.get("seq")), ("first_seq", batch.get("first_seq")),
                              ("last_seq", batch.get("last_seq"))) if v is not None}
    if "seq" in seqs and "first_seq" in seqs and seqs["seq"] - seqs["first_seq"] != index:
        return fail("seq_mismatch", f"record {seqs['seq']} cannot be leaf {index} of a batch whose first "
                                    f"record is {seqs['first_seq']}")
    if "first_seq" in seqs and "last_seq" in seqs and seqs["last_seq"] - seqs["first_seq"] + 1 != anchor.count:
        return fail("seq_mismatch", f"records {seqs['first_seq']}..{seqs['last_seq']} are not the "
                                    f"{anchor.count} records of the batch on chain")

    notes: list[str] = []
    if chain is not None:
        failed = _check_chain(proof, anchor, chain, proven, notes)
        if failed:
            return fail(*failed)
    position = f"record {record['seq']} = leaf {index}" if "seq" in record else f"leaf {index}"
    where = f" in block {proven['anchor.block']}" if "anchor.block" in proven else ""
    return verdict(True, "valid", f"{position} of {anchor.count} in batch {anchor.sequence}, "
                                  f"anchored by {anchor.gateway}{where}", tuple(notes))


def _check_chain(proof: dict, anchor: OnChainAnchor, chain: ChainFacts, proven: dict,
                 notes: list[str]) -> tuple[str, str] | None:
    """The file's chain, registry and anchor against the chain's event and registry history."""
    if "chain_id" in proof and proof["chain_id"] is not None:
        if proof["chain_id"] != chain.chain_id:
            return "chain_mismatch", f"the file says chain {proof['chain_id']}, the RPC serves chain {chain.chain_id}"
        proven["chain_id"] = chain.chain_id
    if proof.get("registry") is not None:
        if not _same_hex(proof["registry"], chain.registry):
            return "registry_mismatch", f"the file names registry {proof['registry']}, not {chain.registry}"
        proven["registry"] = proof["registry"]
    event = chain.event
    if event is None:
        return "event_mismatch", (f"anchorOf says the root was anchored at {anchor.anchored_at} s, but no "
                                  "Anchored event for it is in the blocks of that time")
    mine = (event.gateway, event.sequence, event.count, event.first_ms, event.last_ms)
    theirs = (anchor.gateway, anchor.sequence, anchor.count, anchor.first_ms, anchor.last_ms)
    if mine != theirs or event.block_time != anchor.anchored_at:
        return "event_mismatch", f"the Anchored event {mine} at {event.block_time} s disagrees with anchorOf {theirs}"
    file_anchor = proof.get("anchor")
    if file_anchor is not None:
        if not isinstance(file_anchor, dict):
            return "bad_format", "anchor is neither null nor an object"
        if "tx" in file_anchor and not _same_hex(file_anchor["tx"], event.tx):
            return "tx_mismatch", f"anchor.tx is {file_anchor['tx']}, the root was anchored by transaction {event.tx}"
        if "block" in file_anchor and file_anchor["block"] != event.block:
            return "block_mismatch", f"anchor.block is {file_anchor['block']!r}, the root was anchored in block {event.block}"
        proven.update({f"anchor.{k}": v for k, v in file_anchor.items() if k in ("tx", "block")})
    proven.update({"anchor.tx": event.tx, "anchor.block": event.block, "anchor.block_time": event.block_time,
                   "anchor.confirmations": chain.head - event.block + 1})

    at = (event.block, event.log_index)
    before = [e for e in chain.registration if (e[1], e[2]) < at]
    after = [e for e in chain.registration if (e[1], e[2]) > at]
    if not before or before[-1][0] != "added":
        if not before:
            return "not_registered", f"gateway {anchor.gateway} was never added to the registry before block {event.block}"
        return "not_registered", (f"gateway {anchor.gateway} was removed from the registry in block {before[-1][1]}, "
                                  f"before the anchor in block {event.block}")
    history = {"added_in_block": before[-1][1], "anchor_block": event.block,
               "removed_in_block": next((b for kind, b, _ in after if kind == "removed"), None),
               "events": [{"event": kind, "block": b} for kind, b, _ in chain.registration]}
    proven["gateway.registration"] = history
    if history["removed_in_block"] is not None:
        readded = [b for kind, b, _ in after if kind == "added"]
        notes.append(f"gateway {anchor.gateway} was removed from the registry in block {history['removed_in_block']}, "
                     f"after this anchor (block {event.block}): the anchor stays valid"
                     + (f"; re-added in block {readded[-1]}" if readded else "; it may not anchor since"))
    return None


def verify_proof(proof: dict, rpc_url: str, registry: str, *, gateway: str | None = None,
                 any_gateway: bool = False, timeout: float = 10.0) -> Verdict:
    """Check ``proof`` against the registry at ``registry`` (the verifier's, never the file's)
    on the chain behind ``rpc_url``. Raises CannotTell when the chain cannot be asked: that is
    neither valid nor invalid."""
    if not isinstance(proof, dict):
        return Verdict(False, "bad_format", "a proof file is a JSON object")
    try:
        root = _hex(proof["root"], 32)
    except (KeyError, TypeError, ValueError, AttributeError):
        return check(proof, OnChainAnchor("0x" + "00" * 20, 0, 0, 0, 0, 0))  # says what is malformed
    try:
        _hex(registry, 20)
    except ValueError:
        raise ValueError(f"registry {registry!r} is not a 20-byte hex address") from None
    call: Callable[..., Any] = lambda method, *params: rpc(rpc_url, method, *params, timeout=timeout)  # noqa: E731
    try:
        chain_id = _int(call("eth_chainId"))
        head = _int(call("eth_blockNumber"))
        code = call("eth_getCode", registry, "latest")
    except _RpcError as e:
        raise CannotTell(f"{rpc_url}: {e}", reason="rpc_error") from None
    if not code or _hex(code) == b"":
        return Verdict(False, "no_registry", f"no ProofRegistry at {registry}: the chain ({chain_id}) holds no "
                                             "contract code there")
    try:
        out = eth_call(rpc_url, registry, ANCHOR_OF + root, timeout=timeout)
    except _RpcError as e:
        return Verdict(False, "no_registry", f"no ProofRegistry at {registry}: anchorOf fails ({e})")
    if len(out) != 6 * 32:
        return Verdict(False, "no_registry", f"no ProofRegistry at {registry}: anchorOf answers {len(out)} bytes, "
                                             "not 192")
    anchor = _decode_anchor(out)
    facts = None
    if anchor.exists:
        try:
            event = anchored_event(rpc_url, registry, root, anchor, head)
            history = registration_history(rpc_url, registry, anchor.gateway, head)
        except _RpcError as e:
            raise CannotTell(f"{rpc_url}: {e}", reason="rpc_error") from None
        facts = ChainFacts(chain_id, registry, head, event, history)
    return check(proof, anchor, gateway=gateway, any_gateway=any_gateway, chain=facts)
