"""Encryption at rest of buffered payloads ([buffer] encrypt_at_rest): readers see the plaintext
record, the segment files do not hold it, a payload that does not open is reported and never
raised, a wrong node key is said plainly, and the leaf is the plaintext's (docs/proofs.md,
"Encryption and the leaf")."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.buffer.cipher import ENCRYPTED, RecordCipher, RecordCipherError, key_id
from gateway.buffer.store import RecordStore, StoreConfig, StoreError
from gateway.chain.datakey import DataKeyError, cipher_from_config, load_data_key
from gateway.chain.keystore import load_key, new_key
from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.proofs.leaf import record_leaf

T0 = 1_718_757_942.25
PASSPHRASE = "correct horse battery"


def doc_of(vector, i: int = 0) -> dict:
    kind = {"data": "data", "confirm": "confirm", "json": "data"}[vector["kind"]]
    return {"rx": T0 + i, "device": vector["imei"] or "350000000000001", "kind": kind,
            "wire": "json" if vector["kind"] == "json" else "protobuf", "address": vector["address"],
            "digest": "ab" * 32, "trust": "secure-element", "payload": vector["payload_base64"]}


def docs(n: int, *, start: int = 0) -> list[dict]:
    """Records with distinct, recognisable payloads (the raw bytes spell ``secret-reading-<i>``)."""
    return [{"rx": T0 + start + i, "device": f"dev{(start + i) % 3}", "kind": "data",
             "payload": base64.b64encode(f"secret-reading-{start + i:04d}".encode()).decode()}
            for i in range(n)]


def segment_bytes(records_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((records_dir / "segments").glob("seg-*.json")))


def stored(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("seq", "state")}


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def cipher(key) -> RecordCipher:
    return RecordCipher(key)


def config_for(tmp_path: Path, *, on: bool = True):
    secret = tmp_path / "passphrase"
    if not secret.exists():
        secret.write_text(PASSPHRASE + "\n")
    env = {"W3GATE_BUFFER_ENCRYPT_AT_REST": "true" if on else "false",
           "W3GATE_CHAIN_KEY_PASSPHRASE_FILE": str(secret)}
    return load_config(env=env, data_dir=tmp_path / "data"), env


@pytest.fixture
def node(tmp_path):
    """A data directory with a node key, and encryption at rest configured."""
    config, env = config_for(tmp_path)
    identity = new_key(config.layout.node_key, PASSPHRASE)
    return config, env, identity


# -- the store ---------------------------------------------------------------------------------

def test_a_round_trip_gives_every_reader_the_plaintext_record(tmp_path, cipher):
    written = docs(9) + [{"rx": T0 + 9, "device": "dev0", "payload": "not base64, kept exactly!"},
                         {"rx": T0 + 10, "device": "dev1", "payload": "QUJD"}]
    with RecordStore(tmp_path / "rec", StoreConfig(segment_records=4), cipher=cipher) as store:
        seqs = store.append(written).seqs
        assert [stored(store.get(s)) for s in seqs] == written
    with RecordStore(tmp_path / "rec", readonly=True, cipher=cipher) as reader:  # another process's view
        assert [stored(d) for d in reader.iter_records(newest_first=False)] == written
        assert [d["seq"] for d in reader.iter_records(device="dev1")] == [11, 8, 5, 2]
        assert all(ENCRYPTED not in d for d in reader.iter_records())
        assert reader.check_all() == [] and reader.stats()["damage"] == []


def test_the_segment_files_hold_no_plaintext_payload(tmp_path, cipher):
    written = docs(10)
    with RecordStore(tmp_path / "rec", StoreConfig(segment_records=4), cipher=cipher) as store:
        store.append(written)
    raw = segment_bytes(tmp_path / "rec")
    for doc in written:
        assert doc["payload"].encode() not in raw
        assert base64.b64decode(doc["payload"]) not in raw
    assert b"secret-reading" not in raw and b'"payload"' not in raw
    on_disk = json.loads((tmp_path / "rec" / "segments" / "seg-000000000001.json").read_bytes())["records"]
    assert on_disk["1"][ENCRYPTED].startswith(cipher.key_id + ":")
    # a random nonce per record: the same payload twice is stored as two different ciphertexts
    with RecordStore(tmp_path / "rec2", cipher=cipher) as store:
        store.append([docs(1)[0], docs(1)[0]])
        assert store.get(1)["payload"] == store.get(2)["payload"]
    twins = json.loads(segment_bytes(tmp_path / "rec2"))["records"]
    assert twins["1"][ENCRYPTED] != twins["2"][ENCRYPTED]


def test_records_written_in_the_clear_stay_readable_once_encryption_is_on(tmp_path, key, cipher):
    old, new = docs(5), docs(5, start=5)
    with RecordStore(tmp_path / "rec", StoreConfig(segment_records=4)) as store:
        store.append(old)
    with RecordStore(tmp_path / "rec", StoreConfig(segment_records=4), cipher=cipher) as store:
        store.append(new)
        assert [stored(d) for d in store.iter_records(newest_first=False)] == old + new
    raw = segment_bytes(tmp_path / "rec")
    assert all(d["payload"].encode() in raw for d in old)  # left as they were: never rewritten
    assert not any(d["payload"].encode() in raw for d in new)
    # turned off again (the cipher only opens): new records in the clear, all of them readable
    with RecordStore(tmp_path / "rec", StoreConfig(segment_records=4),
                     cipher=RecordCipher(key, encrypt_new=False)) as store:
        later = docs(2, start=10)
        store.append(later)
        assert [stored(d) for d in store.iter_records(newest_first=False)] == old + new + later
    assert all(d["payload"].encode() in segment_bytes(tmp_path / "rec") for d in later)


def _edit_segment(path: Path, edit) -> None:
    data = json.loads(path.read_bytes())
    edit(data["records"])
    path.write_text(json.dumps(data, separators=(",", ":")))


def test_a_tampered_ciphertext_is_reported_as_damage_not_raised(tmp_path, cipher):
    with RecordStore(tmp_path / "rec", StoreConfig(segment_records=4), cipher=cipher) as store:
        store.append(docs(6))
    first = tmp_path / "rec" / "segments" / "seg-000000000001.json"

    def flip(records):
        kid, text = records["2"][ENCRYPTED].split(":")
        sealed = bytearray(base64.b64decode(text))
        sealed[-1] ^= 1
        records["2"][ENCRYPTED] = f"{kid}:{base64.b64encode(bytes(sealed)).decode()}"
        records["3"][ENCRYPTED], records["4"][ENCRYPTED] = records["4"][ENCRYPTED], records["3"][ENCRYPTED]
    _edit_segment(first, flip)
    before = first.read_bytes()
    for readonly in (True, False):  # a reader, and the gateway itself
        with RecordStore(tmp_path / "rec", StoreConfig(segment_records=4), readonly=readonly,
                         cipher=cipher) as store:
            got = {d["seq"]: d for d in store.iter_records()}
            assert sorted(got) == [1, 2, 3, 4, 5, 6]  # every record is still listed
            for seq in (2, 3, 4):  # altered, and two swapped: a ciphertext is bound to its record
                assert "payload" not in got[seq] and got[seq]["payload_error"].startswith("tampered: record")
            assert got[1]["payload"] == docs(6)[0]["payload"]
            assert store.get(2)["payload_error"]
            assert sorted(store.unreadable) == [2, 3, 4]
            damage = store.check_all()
            assert len(damage) == 3 and all(d.moved_to is None and d.file == str(first) for d in damage)
            assert min(d.lost for d in damage) == "record 2's payload is unreadable; the file is left as it is"
            assert store.stats()["damage"][0]["reason"].startswith("tampered:")
    assert first.read_bytes() == before  # the file is left as it is (with the right key it opens)


def test_a_store_without_its_data_key_reads_encrypted_payloads_as_unreadable(tmp_path, cipher):
    with RecordStore(tmp_path / "rec", cipher=cipher) as store:
        store.append(docs(2))
    with RecordStore(tmp_path / "rec", readonly=True) as reader:
        doc = reader.get(1)
        assert "payload" not in doc and doc["payload_error"].startswith("no_data_key:")
        assert [d["seq"] for d in reader.iter_records()] == [2, 1] and reader.damage == []  # not damage
    other = RecordCipher(os.urandom(32))
    with RecordStore(tmp_path / "rec", readonly=True) as reader:
        reader.cipher = other  # a reader given another data key: per-record errors name both keys
        assert f"data key {cipher.key_id}" in reader.get(1)["payload_error"]
    with pytest.raises(StoreError) as e:  # the gateway with another data key would mix two: refused
        RecordStore(tmp_path / "rec", cipher=other)
    assert e.value.reason == "wrong_data_key" and cipher.key_id in str(e.value) and other.key_id in str(e.value)


def test_the_cipher_refuses_a_malformed_or_foreign_ciphertext_with_a_reason(cipher):
    sealed = cipher.seal(7, "dev", "QUJD")
    assert cipher.open(7, "dev", sealed) == "QUJD"
    for seq, device, text, reason in [(8, "dev", sealed, "tampered"), (7, "other", sealed, "tampered"),
                                      (7, "dev", "nope", "malformed"), (7, "dev", 42, "malformed"),
                                      (7, "dev", cipher.key_id + ":!!", "malformed"),
                                      (7, "dev", "00000000:" + sealed.split(":")[1], "wrong_data_key")]:
        with pytest.raises(RecordCipherError) as e:
            cipher.open(seq, device, text)
        assert e.value.reason == reason


def test_the_leaf_of_an_encrypted_record_is_the_leaf_of_the_plaintext_record(tmp_path, cipher, vectors):
    written = [doc_of(vectors[n], i) for i, n in enumerate("ABC")]
    with RecordStore(tmp_path / "plain") as plain, RecordStore(tmp_path / "enc", cipher=cipher) as enc:
        plain.append(written)
        enc.append(written)
        for seq, vector in zip((1, 2, 3), (vectors[n] for n in "ABC")):
            leaf = record_leaf(enc.get(seq), vector["address"])
            assert leaf == record_leaf(plain.get(seq), vector["address"])
            assert leaf == record_leaf({**written[seq - 1], "seq": seq}, vector["address"])
    assert vectors["A"]["payload_base64"].encode() not in segment_bytes(tmp_path / "enc")


# -- the data key, the node key and the configuration ------------------------------------------

def test_encryption_needs_the_node_keys_passphrase_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(env={"W3GATE_BUFFER_ENCRYPT_AT_REST": "true"}, data_dir=tmp_path)
    assert "buffer.encrypt_at_rest needs chain.key_passphrase_file" in str(e.value)
    assert "W3GATE_BUFFER_ENCRYPT_AT_REST" in str(e.value)
    assert load_config(env={}, data_dir=tmp_path).buffer.encrypt_at_rest is False
    assert cipher_from_config(load_config(env={}, data_dir=tmp_path)) is None  # off: nothing unlocked


def test_the_data_key_is_made_once_sealed_to_the_node_key_and_private(node):
    config, _, identity = node
    path = config.layout.data_key
    assert cipher_from_config(config) is None  # a reader before the gateway made it: nothing to open
    assert not path.exists()
    made = cipher_from_config(config, create=True)
    blob = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    assert blob["node_address"] == identity.address and blob["key_id"] == made.key_id
    data_key = load_data_key(path, bytes(load_key(config.layout.node_key, PASSPHRASE).key), identity.address,
                             create=False)
    assert key_id(data_key) == made.key_id
    assert data_key.hex() not in path.read_text() and base64.b64encode(data_key).decode() not in path.read_text()
    again = cipher_from_config(config, create=True)  # never replaced
    assert again.key_id == made.key_id and json.loads(path.read_text()) == blob
    assert cipher_from_config(config).key_id == made.key_id  # readers open the same key


def test_a_wrong_node_key_is_a_clear_error(node, tmp_path):
    config, _, identity = node
    cipher_from_config(config, create=True)
    config.layout.node_key.unlink()
    other = new_key(config.layout.node_key, PASSPHRASE)  # the node key replaced
    with pytest.raises(DataKeyError) as e:
        cipher_from_config(config, create=True)
    assert e.value.reason == "wrong_node_key"
    message = str(e.value)
    assert identity.address in message and other.address in message and "history is lost" in message
    # a data key file altered to name the new node key still does not open with it
    blob = json.loads(config.layout.data_key.read_text())
    config.layout.data_key.write_text(json.dumps({**blob, "node_address": other.address}))
    with pytest.raises(DataKeyError) as e:
        cipher_from_config(config)
    assert e.value.reason == "corrupt" and "restore it from a backup" in str(e.value)


def test_turned_off_the_data_key_still_opens_what_was_encrypted(node, tmp_path):
    config, _, _ = node
    made = cipher_from_config(config, create=True)
    off, _ = config_for(tmp_path, on=False)
    reading = cipher_from_config(off)
    assert reading is not None and reading.key_id == made.key_id and reading.encrypt_new is False


# -- the command line ----------------------------------------------------------------------------

def cli(env: dict, *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_the_cli_reads_encrypted_records_and_reports_a_wrong_node_key(node, vectors):
    config, env, _ = node
    data_dir = str(config.data_dir)
    with RecordStore(config.layout.records, cipher=cipher_from_config(config, create=True)) as store:
        store.append([doc_of(vectors[n], i) for i, n in enumerate("ABC")])
    assert b"payload\"" not in segment_bytes(config.layout.records)
    listed = cli(env, "records", "--json", "--data-dir", data_dir)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["payload"] for r in rows] == [vectors[n]["payload_base64"] for n in "CBA"]
    assert all("leaf" in r and "error" not in r["values"] for r in rows)
    checked = cli(env, "buffer", "check", "--data-dir", data_dir)
    assert checked.exit_code == 0 and "no damage" in checked.output

    _edit_segment(config.layout.records / "segments" / "seg-000000000001.json",
                  lambda records: records["2"].update({ENCRYPTED: records["1"][ENCRYPTED]}))
    checked = cli(env, "buffer", "check", "--data-dir", data_dir)
    assert checked.exit_code == 1 and "UNREADABLE" in checked.output and "record 2" in checked.output
    rows = json.loads(cli(env, "records", "--json", "--data-dir", data_dir).stdout)
    assert rows[1]["values"]["error"].startswith("unreadable payload: tampered") and "leaf_error" in rows[1]
    proof = cli(env, "proof", "2", "--data-dir", data_dir)
    assert proof.exit_code == 1 and "cannot be proven" in proof.output

    config.layout.node_key.unlink()
    new_key(config.layout.node_key, PASSPHRASE)
    refused = cli(env, "records", "--data-dir", data_dir)
    assert refused.exit_code == 1
    assert "Error: wrong_node_key: encryption at rest:" in refused.output and "history is lost" in refused.output
