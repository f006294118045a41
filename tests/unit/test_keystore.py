"""The node key: encrypted at rest, 0600, atomic, shown as address and DID but never as the key."""
from __future__ import annotations

import json
import stat

import pytest
from click.testing import CliRunner
from eth_account import Account

from gateway.chain.keystore import KeystoreError, did_of, load_key, new_key, read_identity, save_key
from gateway.cli.key import key
from gateway.layout import DataDir

DEV_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
DEV_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
FAST = {"kdf": "pbkdf2", "iterations": 2}  # the KDF cost is not under test


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_saved_key_round_trips_and_the_file_is_private(tmp_path):
    path = tmp_path / "node-key.json"
    identity = save_key(path, DEV_KEY, "correct horse", **FAST)
    assert identity.address == DEV_ADDRESS
    assert mode(path) == 0o600
    assert DEV_KEY[2:] not in path.read_text()
    assert load_key(path, "correct horse").key.hex().removeprefix("0x") == DEV_KEY[2:]
    assert not list(tmp_path.glob("*.tmp"))


def test_the_default_kdf_is_scrypt(tmp_path):
    identity = new_key(tmp_path / "k.json", "correct horse")
    blob = json.loads(identity.path.read_text())
    assert blob["crypto"]["kdf"] == "scrypt" and blob["version"] == 3


def test_a_wrong_passphrase_is_refused_with_a_reason(tmp_path):
    path = save_key(tmp_path / "k.json", DEV_KEY, "correct horse", **FAST).path
    with pytest.raises(KeystoreError) as e:
        load_key(path, "wrong horse")
    assert e.value.reason == "bad_passphrase"


def test_the_address_and_did_are_readable_without_the_passphrase(tmp_path):
    path = save_key(tmp_path / "k.json", DEV_KEY, "correct horse", **FAST).path
    identity = read_identity(path)
    assert identity.address == DEV_ADDRESS
    assert identity.did == "did:io:" + DEV_ADDRESS.lower()


def test_an_existing_key_is_never_replaced_silently(tmp_path):
    path = save_key(tmp_path / "k.json", DEV_KEY, "correct horse", **FAST).path
    with pytest.raises(KeystoreError) as e:
        new_key(path, "correct horse", **FAST)
    assert e.value.reason == "exists"
    assert read_identity(path).address == DEV_ADDRESS
    replaced = new_key(path, "correct horse", overwrite=True, **FAST)
    assert replaced.address != DEV_ADDRESS and mode(path) == 0o600


def test_a_short_passphrase_or_a_bad_key_is_refused(tmp_path):
    with pytest.raises(KeystoreError) as weak:
        save_key(tmp_path / "k.json", DEV_KEY, "short")
    assert weak.value.reason == "weak_passphrase"
    with pytest.raises(KeystoreError) as bad:
        save_key(tmp_path / "k.json", "0x1234", "correct horse")
    assert bad.value.reason == "bad_key"
    assert not (tmp_path / "k.json").exists()


def test_did_form():
    assert did_of("0xAbCdEf0123456789abcdef0123456789ABCDEF01") == "did:io:0xabcdef0123456789abcdef0123456789abcdef01"
    with pytest.raises(KeystoreError):
        did_of("0x1234")


# -- the command line ------------------------------------------------------------------------

def run(*args, input=None):
    return CliRunner().invoke(key, list(args), input=input, catch_exceptions=False)


def test_cli_new_with_a_passphrase_file_then_show_prints_address_and_did_only(tmp_path):
    secret = tmp_path / "pass"
    secret.write_text("correct horse\n")
    created = run("new", "--data-dir", str(tmp_path), "--passphrase-file", str(secret), "--json")
    assert created.exit_code == 0, created.output
    info = json.loads(created.output)
    path = DataDir(tmp_path).node_key
    assert mode(path) == 0o600
    account = load_key(path, "correct horse")  # the newline was not part of the passphrase
    assert info == {"address": account.address, "did": "did:io:" + account.address.lower(), "keystore": str(path)}

    shown = run("show", "--data-dir", str(tmp_path))
    assert shown.exit_code == 0
    assert account.address in shown.output and info["did"] in shown.output
    assert account.key.hex().removeprefix("0x") not in shown.output

    again = run("new", "--data-dir", str(tmp_path), "--passphrase-file", str(secret))
    assert again.exit_code != 0 and "already holds a node key" in again.output


def test_cli_new_prompts_twice_and_refuses_a_mismatch(tmp_path):
    mismatch = run("new", "--data-dir", str(tmp_path), input="correct horse\ncorrect h0rse\n"
                   "correct horse\ncorrect horse\n")
    assert "do not match" in mismatch.output
    assert mismatch.exit_code == 0
    assert load_key(DataDir(tmp_path).node_key, "correct horse")


def test_cli_import_a_hex_key_and_a_v3_keystore(tmp_path):
    hexfile = tmp_path / "key.hex"
    hexfile.write_text(DEV_KEY + "\n")
    secret = tmp_path / "pass"
    secret.write_text("correct horse")
    one = tmp_path / "one"
    result = run("import", str(hexfile), "--data-dir", str(one), "--passphrase-file", str(secret))
    assert result.exit_code == 0 and DEV_ADDRESS in result.output
    assert load_key(DataDir(one).node_key, "correct horse").address == DEV_ADDRESS

    v3 = tmp_path / "v3.json"
    v3.write_text(json.dumps(Account.encrypt(DEV_KEY, "correct horse", kdf="pbkdf2", iterations=2)))
    two = tmp_path / "two"
    result = run("import", str(v3), "--data-dir", str(two), "--passphrase-file", str(secret), "--json")
    assert result.exit_code == 0 and json.loads(result.output)["address"] == DEV_ADDRESS
    assert mode(DataDir(two).node_key) == 0o600


def test_cli_show_without_a_key_says_how_to_make_one(tmp_path):
    result = run("show", "--data-dir", str(tmp_path))
    assert result.exit_code != 0 and "w3gate key new" in result.output


def test_a_new_key_is_a_standard_scrypt_keystore_a_small_board_unlocks_with_32_mib(tmp_path):
    identity = new_key(tmp_path / "node-key.json", "correct horse")
    blob = json.loads((tmp_path / "node-key.json").read_text())
    assert blob["version"] == 3 and blob["crypto"]["kdf"] == "scrypt"
    assert {k: blob["crypto"]["kdfparams"][k] for k in ("n", "r", "p")} == {"n": 2 ** 15, "r": 8, "p": 1}
    assert Account.from_key(Account.decrypt(blob, "correct horse")).address == identity.address  # any V3 reader


def test_a_key_saved_with_a_costlier_scrypt_is_re_encrypted_cheaper_when_first_unlocked(tmp_path):
    path = tmp_path / "node-key.json"
    path.write_text(json.dumps(Account.encrypt(DEV_KEY, "correct horse", kdf="scrypt", iterations=2 ** 16)))
    account = load_key(path, "correct horse")
    blob = json.loads(path.read_text())
    assert blob["crypto"]["kdfparams"]["n"] == 2 ** 15 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path, "correct horse").address == account.address == Account.from_key(DEV_KEY).address


def test_ensure_makes_a_key_and_a_random_passphrase_once_and_then_keeps_both(tmp_path):
    """What the service runs before every start: the first makes this device's identity, the
    others change nothing (neither the key nor the passphrase that opens it)."""
    secret = tmp_path / "state" / "node-key.pass"
    made = run("ensure", "--data-dir", str(tmp_path / "state"), "--passphrase-file", str(secret), "--json")
    assert made.exit_code == 0, made.output
    path = DataDir(tmp_path / "state").node_key
    assert mode(path) == mode(secret) == 0o600
    passphrase = secret.read_text().strip()
    assert len(passphrase) >= 40  # 256 random bits, URL-safe
    account = load_key(path, passphrase)
    assert json.loads(made.output)["address"] == account.address

    key_bytes, secret_bytes = path.read_bytes(), secret.read_bytes()
    kept = run("ensure", "--data-dir", str(tmp_path / "state"), "--passphrase-file", str(secret))
    assert kept.exit_code == 0 and kept.output.startswith("kept") and account.address in kept.output
    assert (path.read_bytes(), secret.read_bytes()) == (key_bytes, secret_bytes)


def test_ensure_uses_a_passphrase_file_that_exists_and_two_devices_get_two_identities(tmp_path):
    secret = tmp_path / "pass"
    secret.write_text("chosen by the owner\n")
    first = run("ensure", "--data-dir", str(tmp_path / "a"), "--passphrase-file", str(secret), "--json")
    second = run("ensure", "--data-dir", str(tmp_path / "b"), "--passphrase-file", str(tmp_path / "b.pass"), "--json")
    assert first.exit_code == second.exit_code == 0
    assert secret.read_text() == "chosen by the owner\n"
    load_key(DataDir(tmp_path / "a").node_key, "chosen by the owner")
    assert json.loads(first.output)["address"] != json.loads(second.output)["address"]
