"""docs/proofs.md is enough: a verifier written from it alone (tests/support/stranger_verifier.py,
no w3gate code) rebuilds every leaf of a real gateway's records, of every wire and kind, from
`w3gate records --json`, every batch root from the journal's record ranges, and finds exactly
those roots on chain; and the doc's worked vectors are what both that verifier and the gateway's
own code compute, so the doc and the code cannot drift apart."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from device_fw import frame as legacy_wire
from gateway.codec.record import WIRES, Record
from gateway.legacy.attest import attestation_digest
from gateway.legacy.registry import LegacyRegistry, new_legacy_device
from gateway.proofs import merkle
from gateway.proofs.leaf import leaf_fields
from gateway.verify.secp256k1 import recover
from tests.hil.test_serial_bridge import Cable, send
from tests.support import stranger_verifier as stranger
from tests.support.gateway import chain_gateway, cli, cli_json, sim

DOC = Path(__file__).resolve().parents[2] / "docs" / "proofs.md"


def doc_blocks() -> list[dict[str, list[str]]]:
    return [b for b in stranger.parse_blocks(DOC.read_text()) if "vector" in b or "merkle" in b]


def joined(block: dict[str, list[str]], name: str) -> str:
    return "".join(block[name])


def wire_vectors() -> list[dict[str, list[str]]]:
    return [b for b in doc_blocks() if "vector" in b]


# -- the doc's worked vectors ---------------------------------------------------------------------

def test_the_doc_has_a_worked_vector_for_every_wire_and_names_every_kind_the_buffer_stores():
    vectors = {(joined(b, "wire"), joined(b, "kind")) for b in wire_vectors()}
    assert vectors == {("protobuf", "data"), ("protobuf", "confirm"), ("json", "data"), ("legacy", "data")}
    section = DOC.read_text().split("## From a buffered record to its leaf", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ((?:`\w+`(?:, )?)+) \|", section, re.M)
    documented = {(wire, kind) for wire, kinds in rows for kind in re.findall(r"`(\w+)`", kinds)} - {("wire", "kind")}
    stored = {(w.name, kind) for w in WIRES.values() for kind in w.events}
    assert documented == stored  # a new wire or kind fails here until the doc says how its leaf is made


@pytest.mark.parametrize("block", wire_vectors(), ids=lambda b: joined(b, "vector"))
def test_each_worked_vector_is_what_the_doc_rules_and_the_gateway_compute(block):
    wire, kind, address = joined(block, "wire"), joined(block, "kind"), joined(block, "address")
    payload = bytes.fromhex(joined(block, "payload"))
    rx = float(joined(block, "rx"))
    attestation = joined(block, "attestation") if "attestation" in block else None
    signature = bytes.fromhex(joined(block, "signature"))
    # the stranger, from the doc's rules
    assert stranger.signature_from_payload(wire, kind, payload, attestation) == signature
    assert hashlib.sha256(payload).hexdigest() == joined(block, "payload_sha256")
    assert stranger.received_ms(rx) == int(joined(block, "received_ms"))
    preimage = stranger.leaf_preimage(address, signature, hashlib.sha256(payload).digest(), stranger.received_ms(rx))
    assert preimage.hex() == joined(block, "preimage") and len(preimage) == 125
    assert stranger.keccak256(preimage).hex() == joined(block, "leaf")
    # the gateway, from the same record
    doc = {"seq": 1, "rx": rx, "wire": wire, "kind": kind, "payload": base64.b64encode(payload).decode(),
           **({"attestation": attestation} if attestation else {})}
    fields = leaf_fields(doc, address)
    assert fields == {"address": address, "signature": signature.hex(),
                      "payload_sha256": joined(block, "payload_sha256"), "received_ms": int(joined(block, "received_ms"))}
    assert merkle.leaf_preimage(address, signature, bytes.fromhex(fields["payload_sha256"]),
                                fields["received_ms"]).hex() == joined(block, "preimage")
    Record(doc).message  # noqa: B018 - the payload decodes as the wire it claims to be
    if wire == "json":
        assert signature.hex() == (stranger.unswap(joined(block, "r_wire")) + stranger.unswap(joined(block, "s_wire"))).lower()
        envelope = json.loads(payload)
        assert (envelope["signature"]["r"], envelope["signature"]["s"]) == (joined(block, "r_wire"), joined(block, "s_wire"))
    if wire == "legacy":
        attested = bytes.fromhex(joined(block, "attested_bytes"))
        assert attested == (b"w3gate/attestation/v1\x00" + hashlib.sha256(payload).digest()
                            + int(joined(block, "received_ms")).to_bytes(8, "big"))
        digest = attestation_digest(hashlib.sha256(payload).digest(), int(joined(block, "received_ms")))
        assert hashlib.sha256(attested).digest() == digest and digest.hex() == joined(block, "attested_sha256")
        assert address in {key.address for _, key in recover(digest, signature)}  # the gateway signed it
        assert legacy_wire.parse(payload)[3] == b'{"temperature":21.53,"humidity":45.2,"up":3600}'


def test_the_worked_tree_is_what_the_doc_rules_and_the_gateway_compute():
    tree = next(b for b in doc_blocks() if "merkle" in b)
    leaves = [bytes.fromhex(joined(tree, f"leaf{i}")) for i in range(3)]
    assert [lf.hex() for lf in leaves] == [joined(b, "leaf") for b in wire_vectors()[:3]]
    node01 = stranger.keccak256(bytes.fromhex(joined(tree, "node01_preimage")))
    assert joined(tree, "node01_preimage") == "01" + leaves[0].hex() + leaves[1].hex()
    assert node01.hex() == joined(tree, "node01")
    assert joined(tree, "root_preimage") == "01" + node01.hex() + leaves[2].hex()
    root = bytes.fromhex(joined(tree, "root"))
    assert stranger.keccak256(bytes.fromhex(joined(tree, "root_preimage"))) == root
    assert stranger.root(leaves) == merkle.root(leaves) == root
    for i in range(3):
        path = [bytes.fromhex(h) for h in tree[f"path{i}"]]
        assert stranger.path(leaves, i) == merkle.proof(leaves, i) == path
        assert stranger.verify(leaves[i], i, path, root, 3) and merkle.verify(leaves[i], i, path, root, 3)
        assert not stranger.verify(leaves[i], i, path, root, 2)  # the count fixes the shape


def test_the_stranger_tree_agrees_with_the_gateway_for_every_size():
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(40)]
    for n in range(1, 41):
        assert stranger.root(leaves[:n]) == merkle.root(leaves[:n])
        for i in range(n):
            assert stranger.path(leaves[:n], i) == merkle.proof(leaves[:n], i)


# -- a real gateway, every wire, anchored on anvil ------------------------------------------------

LEGACY_FRAMES = [(legacy_wire.HELLO, {"fw": "w3gate-fw 0.1", "board": "rp2", "sensors": ["sim"], "period_ms": 500})] \
    + [(legacy_wire.READING, {"temperature": 20 + i / 4, "humidity": 40.5, "up": i}) for i in range(6)] \
    + [(legacy_wire.CONFIG_ACK, {"period_ms": 500, "sensors": ["sim"], "config_seq": 1})] \
    + [(legacy_wire.COMMAND_ACK, {"relay": 1, "command_seq": 1})]


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is installed by ./dev.sh setup")
def test_a_stranger_rebuilds_every_leaf_and_root_of_a_real_gateway_and_finds_them_on_chain(tmp_path, mosquitto, anvil):
    fleet = tmp_path / "fleet"
    sim(mosquitto, fleet, "--count", "4", "--profile", "mixed", "--duration", "0.2")  # g1 and three riverrocks
    by_id = tmp_path / "serial" / "by-id"
    gw, registry, identity, _ = chain_gateway(tmp_path, mosquitto, anvil, chain__batch_records=7,
                                              chain__batch_age_s=0.5, serial__ports=[str(by_id / "usb-*")],
                                              serial__rescan_s=0.2, legacy__rate=1000.0, legacy__burst=1000)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    sensor = new_legacy_device("greenhouse", transport="serial", config={"period_ms": 500, "sensors": ["sim"]})
    LegacyRegistry(gw.data_dir / "legacy_devices.json").add(sensor)
    cable = Cable(by_id, "greenhouse").plug()
    gw.start()
    try:
        gw.wait_for(lambda s: s.get("legacy", {}).get("serial", {}).get("ports"), what="the serial port opened")
        port = cable.device()
        for seq, (frame_type, values) in enumerate(LEGACY_FRAMES, start=1):
            send(port, sensor, seq, values, frame_type)
        summary = sim(mosquitto, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1", "--register",
                      "--duration", "30")
        published = summary["published"]
        expected = published.get("data", 0) + published.get("config", 0) + published.get("confirm", 0) \
            + len(LEGACY_FRAMES)
        gw.wait_for(lambda s: s["buffer"]["last_seq"] == expected and s["buffer"]["anchored_upto"] >= expected,
                    timeout=90, what=f"{expected} records, all anchored")
    finally:
        gw.stop()
        cable.unplug()

    rows = sorted(cli_json("records", "--limit", "0", data_dir=gw.data_dir), key=lambda r: r["seq"])
    assert [r["seq"] for r in rows] == list(range(1, expected + 1))
    assert {(r["wire"], r["kind"]) for r in rows} == {(w.name, k) for w in WIRES.values() for k in w.events}
    assert sum(r["wire"] == "json" for r in rows) == 3  # the G1 device's readings, nibble-swapped signatures
    # every leaf, from the export alone (and the export checked against the payloads, per the doc)
    leaves = {r["seq"]: stranger.record_leaf(r) for r in rows}
    assert all(leaves[r["seq"]].hex() == r["leaf"].removeprefix("0x") for r in rows)
    gateway_address = identity["address"].lower()
    assert {r["address"].lower() for r in rows if r["wire"] == "legacy"} == {gateway_address}
    assert gateway_address not in {r["address"].lower() for r in rows if r["wire"] != "legacy"}

    # every batch root, from the journal's record ranges (plain JSON files, as the doc describes them)
    journal = gw.data_dir / "proofs"
    meta = json.loads((journal / "anchorer.json").read_text())
    assert meta["registry"].lower() == registry.lower() and meta["gateway"].lower() == gateway_address
    headers = [json.loads(p.read_text()) for p in sorted(journal.glob("b-*.json"))]
    assert [h["sequence"] for h in headers] == list(range(len(headers))) and len(headers) >= 3
    assert [(h["first"], h["last"]) for h in headers] == \
        [(1 if i == 0 else headers[i - 1]["last"] + 1, h["last"]) for i, h in enumerate(headers)]
    assert headers[-1]["last"] == expected  # every record in exactly one batch
    rebuilt = []
    for h in headers:
        batch = [leaves[seq] for seq in range(h["first"], h["last"] + 1)]
        root = stranger.root(batch)
        assert "0x" + root.hex() == h["root"] and h["count"] == len(batch)
        times = [rows[seq - 1]["received_ms"] for seq in range(h["first"], h["last"] + 1)]
        on_chain = stranger.anchor_of(anvil.url, registry, root)
        assert on_chain["gateway"] == gateway_address
        assert (on_chain["sequence"], on_chain["count"]) == (h["sequence"], len(batch))
        assert (on_chain["first_ms"], on_chain["last_ms"]) == (min(times), max(times))
        for i, leaf in enumerate(batch):  # and every record proves against the on-chain count
            assert stranger.verify(leaf, i, stranger.path(batch, i), root, on_chain["count"])
        rebuilt.append((h["sequence"], root, len(batch)))
    events = stranger.anchored_events(anvil.url, registry)
    assert [(e["sequence"], e["root"], e["count"]) for e in events] == rebuilt  # no more, no fewer, in order
    assert {e["gateway"] for e in events} == {gateway_address}
