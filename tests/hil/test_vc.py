"""Credentials end to end on real parts: emulated Pebbles register and report → `w3gate run`
anchors on a real anvil → `w3gate vc issue` states one device's records, owner and anchors →
`w3gate vc verify` proves it against the chain (0), refuses it changed or forged (1), and
cannot tell with the chain gone (3)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time

import pytest

from gateway.credentials import vc
from rig.broker import free_port
from tests.support.gateway import chain_gateway, cli, cli_json, sim, w3gate_exe


@pytest.fixture
def fleet(tmp_path, mosquitto):
    fleet_dir = tmp_path / "fleet"
    sim(mosquitto, fleet_dir, "--count", "2", "--duration", "0.2")
    return fleet_dir


def verify(path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*w3gate_exe(), "vc", "verify", str(path), *args], capture_output=True, text=True,
                          timeout=60)


def test_a_credential_of_anchored_readings_verifies_against_the_chain_and_nothing_else_does(
        tmp_path, mosquitto, anvil, fleet):
    gw, registry, identity, _ = chain_gateway(tmp_path, mosquitto, anvil, chain__batch_records=10,
                                              chain__batch_age_s=0.5)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    started = time.time()
    gw.start()
    try:
        published = sim(mosquitto, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1",
                        "--register")["published"]
        kinds = {kind: n for kind, n in published.items() if kind in ("data", "config", "confirm")}
        gw.wait_for(lambda s: all(s["accepted"].get(kind, 0) == n for kind, n in kinds.items())
                    and s["buffer"]["anchored_upto"] >= s["buffer"]["last_seq"] > 0
                    and s["chain"]["unanchored_batches"] == 0, timeout=30, what="every record accepted and anchored")
    finally:
        gw.stop()
    device = cli_json("device", "list", data_dir=gw.data_dir)[0]
    assert device["status"] == "confirmed"
    imei = device["imei"]
    records = [r for r in cli_json("records", "--device", imei, "--limit", "0", data_dir=gw.data_dir)]
    times = sorted(r["received_ms"] for r in records)

    out = tmp_path / "device.jwt"
    window = ("--from", vc.iso_ms(int(started * 1000) - 1000), "--to", str(int(time.time()) + 1))
    time.sleep(1.1)  # the window has ended
    issued = cli("vc", "issue", "--device", imei, *window, "--out", str(out), data_dir=gw.data_dir,
                 config=gw.config)
    assert issued.stdout.startswith(f"issued {out}: {len(records)} records of did:io:0x"), issued.stdout
    claims = vc.check_offline(out.read_text()).subject
    assert claims.did == "did:io:" + device["address"].lower() and claims.owner == "did:io:" + device["owner"].lower()
    assert (claims.count, claims.first_ms, claims.last_ms) == (len(records), times[0], times[-1])
    assert claims.registry == registry.lower() and claims.chain_id == 31337 and claims.unanchored == 0

    valid = verify(out, "--rpc", anvil.url, "--registry", registry)
    assert valid.returncode == 0 and valid.stdout.startswith(f"valid: {len(records)} records"), valid.stdout + valid.stderr
    assert "Anchored event" in valid.stdout

    token = out.read_text().strip()
    h, p, s = token.split(".")
    flipped = tmp_path / "flipped.jwt"
    flipped.write_text(f"{h}.{p[:-2]}{'A' if p[-2] != 'A' else 'B'}{p[-1]}.{s}")
    changed = verify(flipped, "--rpc", anvil.url, "--registry", registry)
    assert changed.returncode == 1 and changed.stdout.startswith("INVALID ("), changed.stdout

    # signed by the node's own key, but stating what the chain does not hold
    key = bytes.fromhex(anvil.keys[1].removeprefix("0x"))
    batch = claims.anchors[0]
    forgeries = {
        "not_anchored": dataclasses.replace(batch, root="0x" + "77" * 32),
        "batch_mismatch": dataclasses.replace(batch, count=batch.count + 1),
        "tx_mismatch": dataclasses.replace(batch, tx="0x" + "66" * 32),
        "block_mismatch": dataclasses.replace(batch, block=batch.block + 1),
    }
    for reason, forged_batch in forgeries.items():
        forged = vc.build(dataclasses.replace(claims, anchors=(forged_batch, *claims.anchors[1:])),
                          identity["address"], key)
        verdict = vc.verify(forged, anvil.url, registry)
        assert not verdict.ok and verdict.reason == reason, (reason, verdict)
    other = verify(out, "--rpc", anvil.url, "--registry", "0x" + "12" * 20)
    assert other.returncode == 1 and other.stdout.startswith("INVALID (registry_mismatch)"), other.stdout

    nowhere = verify(out, "--rpc", f"http://127.0.0.1:{free_port()}", "--registry", registry)
    assert nowhere.returncode == 3 and "cannot tell" in nowhere.stderr, nowhere.stdout + nowhere.stderr
    anvil.stop()
    gone = verify(out, "--rpc", anvil.url, "--registry", registry)
    assert gone.returncode == 3 and gone.stderr.startswith("cannot tell (chain_unreachable)"), gone.stderr
    offline = verify(out, "--offline")
    assert offline.returncode == 0 and "offline: the anchors were not checked" in offline.stdout


def test_records_not_yet_anchored_are_refused_by_number(tmp_path, mosquitto, anvil, fleet):
    gw, _, _, _ = chain_gateway(tmp_path, mosquitto, anvil, anchoring=False)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    try:
        sent = sim(mosquitto, fleet, "--messages", "2", "--time-scale", "300", "--qos", "1")["published"]["data"]
        gw.wait_for(lambda s: s["accepted"].get("data", 0) == sent, what="readings accepted")
    finally:
        gw.stop()
    imei = cli_json("device", "list", data_dir=gw.data_dir)[0]["imei"]
    refused = cli("vc", "issue", "--device", imei, "--from", "0", "--to", "now", data_dir=gw.data_dir,
                  config=gw.config, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("Error: unanchored: 2 of the 2 records"), refused.stderr
    allowed = cli("vc", "issue", "--device", imei, "--from", "0", "--to", "now", "--allow-unanchored", "--json",
                  data_dir=gw.data_dir, config=gw.config)
    stated = json.loads(allowed.stdout)["credentialSubject"]["records"]
    assert (stated["count"], stated["anchored"], stated["unanchored"]) == (2, 0, 2)
