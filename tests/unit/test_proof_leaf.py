"""How a buffered record becomes its leaf: receive time in ms, the device signature taken from
the payload as sent, the payload digest; and the verifier's checks without a chain."""
from __future__ import annotations

import hashlib

import pytest

from gateway.proofs import merkle
from gateway.codec.record import Record, received_ms
from gateway.proofs.leaf import leaf_fields, record_leaf
from gateway.proofs.verify import FORMAT, OnChainAnchor, check


@pytest.mark.parametrize("rx, ms", [
    (1767225600.0, 1767225600000),
    (1767225600.1234, 1767225600123),
    (1767225600.1236, 1767225600124),
    (1767225600.9996, 1767225601000),  # rounds up into the next second
    (0.0005, 1),                        # half a millisecond rounds up (not to even)
    (0.0015, 2),
    (0.0025, 3),
])
def test_receive_time_is_whole_milliseconds_rounded_half_up(rx, ms):
    assert received_ms(rx) == ms


def doc_of(vector, **extra) -> dict:
    kind = {"data": "data", "confirm": "confirm", "json": "data"}[vector["kind"]]
    return {"rx": 1718757942.25, "device": vector["imei"] or "350000000000001", "kind": kind,
            "wire": "json" if vector["kind"] == "json" else "protobuf", "payload": vector["payload_base64"], **extra}


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_the_signature_is_the_devices_r_s_exactly_as_sent(vectors, name):
    v = vectors[name]
    expected = bytes.fromhex(v["signature"]["r_hex"] + v["signature"]["s_hex"])
    assert Record(doc_of(v)).signature == expected  # high-S stays high-S


def test_leaf_fields_are_what_the_leaf_hashes(vectors):
    v = vectors["A"]
    fields = leaf_fields(doc_of(v), v["address"].lower())
    assert fields == {"address": v["address"], "signature": v["signature"]["r_hex"] + v["signature"]["s_hex"],
                      "payload_sha256": hashlib.sha256(bytes.fromhex(v["payload_hex"])).hexdigest(),
                      "received_ms": 1718757942250}
    assert record_leaf(doc_of(v), v["address"]) == merkle.leaf(
        v["address"], bytes.fromhex(fields["signature"]), bytes.fromhex(fields["payload_sha256"]), 1718757942250)


def proof_of(vectors) -> tuple[dict, OnChainAnchor]:
    """A proof of record 1 of a 3-record batch, and what the chain would say about its root."""
    docs = [doc_of(vectors[n]) for n in "ABC"]
    leaves = [record_leaf(d, vectors[n]["address"]) for d, n in zip(docs, "ABC")]
    root = merkle.root(leaves)
    record = {"payload": docs[1]["payload"], **leaf_fields(docs[1], vectors["B"]["address"])}
    proof = {"format": FORMAT, "record": record, "leaf": "0x" + leaves[1].hex(), "index": 1,
             "path": ["0x" + p.hex() for p in merkle.proof(leaves, 1)], "root": "0x" + root.hex(),
             "gateway": "0x" + "ab" * 20}
    times = [received_ms(d["rx"]) for d in docs]
    return proof, OnChainAnchor("0x" + "ab" * 20, 7, 3, min(times), max(times), 1718758000)


def test_a_valid_proof_checks(vectors):
    proof, anchor = proof_of(vectors)
    verdict = check(proof, anchor)
    assert verdict.ok and verdict.reason == "valid"


@pytest.mark.parametrize("change, reason", [
    (lambda p, a: p["record"].update(received_ms=p["record"]["received_ms"] + 1), "leaf_mismatch"),
    (lambda p, a: p["record"].update(signature="00" * 64), "leaf_mismatch"),
    (lambda p, a: p["record"].update(payload="AAAA"), "payload_mismatch"),
    (lambda p, a: p.update(index=2), "bad_path"),
    (lambda p, a: p["path"].append(p["path"][0]), "bad_path"),
    (lambda p, a: p.update(gateway="0x" + "cd" * 20), "wrong_gateway"),
    (lambda p, a: p.update(format="w3gate-proof/0"), "bad_format"),
    (lambda p, a: p.update(root="0x1234"), "bad_format"),
])
def test_any_change_to_the_record_or_proof_is_caught(vectors, change, reason):
    proof, anchor = proof_of(vectors)
    change(proof, anchor)
    assert check(proof, anchor).reason == reason


def test_the_count_and_gateway_come_from_the_chain_not_the_file(vectors):
    proof, anchor = proof_of(vectors)
    assert check(proof, OnChainAnchor("0x" + "00" * 20, 0, 0, 0, 0, 0)).reason == "not_anchored"
    # a count that changes the tree's shape at this leaf (2 records: the path is one too long)
    assert check(proof, OnChainAnchor(anchor.gateway, 7, 2, anchor.first_ms, anchor.last_ms, 0)).reason == "bad_path"
    assert check(proof, anchor, gateway="0x" + "cd" * 20).reason == "wrong_gateway"
    later = OnChainAnchor(anchor.gateway, 7, 3, anchor.first_ms + 1, anchor.last_ms + 1, 0)
    assert check(proof, later).reason == "time_out_of_range"
