"""Encryption at rest end to end: emulated Pebbles → mosquitto → `w3gate run` with
[buffer] encrypt_at_rest on anvil → every reading anchored, the segment files hold no payload in
the clear, and `w3gate proof N` + `w3gate proof verify` pass as without encryption."""
from __future__ import annotations

import base64
import json
import stat
import subprocess

from gateway.layout import DataDir
from tests.support.gateway import chain_gateway, cli, cli_json, sim, w3gate_exe


def test_encrypted_readings_are_anchored_and_proven(tmp_path, mosquitto, anvil):
    fleet = tmp_path / "fleet"
    sim(mosquitto, fleet, "--count", "3", "--profile", "mixed", "--duration", "0.2")
    gw, registry, identity, _ = chain_gateway(tmp_path, mosquitto, anvil, chain__batch_records=5,
                                              chain__batch_age_s=1.0, buffer__encrypt_at_rest=True)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    try:
        sent = sim(mosquitto, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1")["published"]["data"]
        gw.wait_for(lambda s: s["buffer"]["anchored_upto"] >= s["buffer"]["last_seq"] > 0
                    and s["accepted"].get("data", 0) == sent, timeout=60, what="everything anchored")
    finally:
        gw.stop()
    layout = DataDir(gw.data_dir)
    assert stat.S_IMODE(layout.data_key.stat().st_mode) == 0o600
    assert json.loads(layout.data_key.read_text())["node_address"] == identity["address"]

    records = cli_json("records", "--limit", "0", data_dir=gw.data_dir, config=gw.config)
    assert records and {r["state"] for r in records} == {"anchored"}
    assert all("leaf" in r and "error" not in r["values"] for r in records)
    on_disk = b"".join(p.read_bytes() for p in (layout.records / "segments").glob("seg-*.json"))
    assert b'"payload"' not in on_disk and b'"payload_enc"' in on_disk
    for r in records:
        assert r["payload"].encode() not in on_disk and base64.b64decode(r["payload"]) not in on_disk

    reading = next(r for r in records if r["kind"] == "data")
    proof = cli_json("proof", str(reading["seq"]), data_dir=gw.data_dir, config=gw.config)
    assert proof["record"]["payload"] == reading["payload"] and proof["leaf"] == reading["leaf"]
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof))
    verified = subprocess.run([*w3gate_exe(), "proof", "verify", str(proof_file), "--rpc", anvil.url,
                               "--registry", registry, "--gateway", identity["did"]], capture_output=True, text=True, check=False)
    assert verified.returncode == 0 and verified.stdout.startswith("valid"), verified.stdout + verified.stderr
    checked = cli("buffer", "check", data_dir=gw.data_dir, config=gw.config, check=False)
    assert checked.returncode == 0 and "no damage" in checked.stdout, checked.stdout + checked.stderr
