"""`w3gate pebble decode|verify`: the tool a device owner uses on a captured payload."""
from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import main

A_TIME = 1718757942


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_decode_hex_prints_the_reading(vectors):
    result = run("pebble", "decode", vectors["A"]["payload_hex"])
    assert result.exit_code == 0
    assert "BinPackage DATA" in result.output and "20.77" in result.output
    assert vectors["A"]["address"] in result.output


def test_decode_base64_as_json(vectors):
    result = run("pebble", "decode", vectors["A"]["payload_base64"], "--json")
    info = json.loads(result.output)
    assert info["timestamp"] == A_TIME and info["signature"]["low_s"] is False
    assert vectors["A"]["address"] in info["signer_candidates"].values()


def test_decode_a_file_holding_a_confirm(tmp_path, vectors):
    path = tmp_path / "capture.bin"
    path.write_bytes(bytes.fromhex(vectors["B"]["payload_hex"]))
    result = run("pebble", "decode", str(path))
    assert result.exit_code == 0 and "ConfirmPackage" in result.output


def test_verify_valid_exits_zero(vectors):
    result = run("pebble", "verify", vectors["A"]["payload_base64"], "--address", vectors["A"]["address"])
    assert result.exit_code == 0 and result.output.startswith("valid")


def test_verify_g1_json_by_public_key(vectors):
    c = vectors["C"]
    result = run("pebble", "verify", c["payload_text"], "--public-key", c["public_key_uncompressed_hex"])
    assert result.exit_code == 0, result.output


def test_verify_wrong_signer_exits_one_with_reason(vectors):
    result = run("pebble", "verify", vectors["A"]["payload_hex"], "--address", "0x" + "12" * 20, "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["reason"] == "bad_signature"


def test_verify_with_a_clock_reports_staleness(vectors):
    result = run("pebble", "verify", vectors["A"]["payload_hex"], "--address", vectors["A"]["address"],
                 "--at", str(A_TIME + 86400))
    assert result.exit_code == 1 and "stale" in result.output


def test_verify_confirm_needs_the_right_owner(vectors):
    b = vectors["B"]
    ok = run("pebble", "verify", b["payload_hex"], "--confirm", "--address", b["address"],
             "--owner", b["registered_device_record"]["owner"])
    assert ok.exit_code == 0, ok.output
    wrong = run("pebble", "verify", b["payload_hex"], "--confirm", "--address", b["address"],
                "--owner", "0x" + "34" * 20)
    assert wrong.exit_code == 1 and "wrong_owner" in wrong.output


def test_garbage_is_a_clear_error():
    result = run("pebble", "decode", "zz-not-a-payload")
    assert result.exit_code == 1 and "cannot decode" in result.output
