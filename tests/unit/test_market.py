"""The market's pieces that need no chain: sealing readings to a buyer, the buyer's endpoint as
hostile input, the window rule, the delivery log and the sorted delivery tree."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.market.delivery import (
    ENTRY,
    EMPTY_ROOT,
    DeliveryError,
    DeliveryLog,
    Window,
    check_gap,
    check_reading,
    delivery_root,
    gap_proof,
    reading,
)
from gateway.market.endpoint import EndpointError, parse_endpoint, resolve
from gateway.market.seal import (
    SealError,
    Sealer,
    ephemeral_key,
    new_key_file,
    open_message,
    public_bytes,
    read_key_file,
)
from gateway.proofs import merkle

MARKET = "0x" + "ab" * 20
CHAIN = 31337


def sealer_for(buyer: X25519PrivateKey, purchase: int = 7) -> Sealer:
    return Sealer(ephemeral_key(b"node secret", CHAIN, MARKET, purchase), public_bytes(buyer), CHAIN, MARKET,
                  purchase)


def opened(buyer, raw, purchase: int = 7) -> dict:
    return open_message(buyer, raw, chain_id=CHAIN, market=MARKET, purchase=purchase)


# -- sealing ---------------------------------------------------------------------------------------

def test_the_buyer_opens_what_was_sealed_to_them():
    buyer = X25519PrivateKey.generate()
    raw = sealer_for(buyer).seal(3, b"\x11" * 32, b'{"reading": 1}')
    assert opened(buyer, raw) == {"kind": "reading", "n": 3, "leaf": b"\x11" * 32, "plaintext": b'{"reading": 1}'}


def test_nobody_else_opens_it():
    raw = sealer_for(X25519PrivateKey.generate()).seal(0, bytes(32), b"secret")
    with pytest.raises(SealError) as e:
        opened(X25519PrivateKey.generate(), raw)
    assert e.value.reason == "not_for_this_key"


@pytest.mark.parametrize("field, value", [("n", 4), ("leaf", "22" * 32), ("ct", None), ("epk", "33" * 32)])
def test_an_altered_message_does_not_open(field, value):
    buyer = X25519PrivateKey.generate()
    message = json.loads(sealer_for(buyer).seal(3, b"\x11" * 32, b"reading"))
    if field == "ct":
        ct = bytearray(base64.b64decode(message["ct"]))
        ct[0] ^= 1
        value = base64.b64encode(bytes(ct)).decode()
    message[field] = value
    with pytest.raises(SealError) as e:
        opened(buyer, json.dumps(message).encode())
    assert e.value.reason == "not_for_this_key"


def test_a_reading_and_its_proof_have_separate_nonces_and_neither_passes_for_the_other():
    buyer = X25519PrivateKey.generate()
    sealer = sealer_for(buyer)
    reading_msg = json.loads(sealer.seal(2, b"\x11" * 32, b"the reading"))
    proof_msg = json.loads(sealer.seal(2, b"\x11" * 32, b"its proof", kind="proof"))
    assert opened(buyer, json.dumps(proof_msg).encode())["kind"] == "proof"
    assert reading_msg["ct"] != proof_msg["ct"]
    relabelled = {**reading_msg, "kind": "proof"}
    with pytest.raises(SealError) as e:
        opened(buyer, json.dumps(relabelled).encode())
    assert e.value.reason == "not_for_this_key"


def test_a_message_of_another_purchase_is_named_as_such():
    buyer = X25519PrivateKey.generate()
    raw = sealer_for(buyer, purchase=8).seal(0, bytes(32), b"x")
    with pytest.raises(SealError) as e:
        opened(buyer, raw, purchase=7)
    assert e.value.reason == "other_purchase"


def test_each_purchase_has_its_own_gateway_key_and_a_restart_makes_the_same_one():
    keys = {public_bytes(ephemeral_key(b"node secret", CHAIN, MARKET, p)) for p in (1, 2, 3)}
    assert len(keys) == 3
    assert public_bytes(ephemeral_key(b"node secret", CHAIN, MARKET, 1)) == \
        public_bytes(ephemeral_key(b"node secret", CHAIN, MARKET, 1))


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b"{}", b'{"v": 1}', b"\xff" * 10, b"{" * 100_000,
                                 json.dumps({"v": 1, "chain": CHAIN, "market": MARKET, "purchase": 7, "n": -1,
                                             "leaf": "00" * 32, "epk": "00" * 32, "ct": ""}).encode(),
                                 json.dumps({"v": 1, "chain": CHAIN, "market": MARKET, "purchase": 7, "n": 0,
                                             "leaf": "zz", "epk": "00" * 32, "ct": "!!"}).encode()])
def test_hostile_messages_are_refused_with_a_reason(raw):
    with pytest.raises(SealError) as e:
        opened(X25519PrivateKey.generate(), raw)
    assert e.value.reason in ("malformed", "too_large", "other_purchase", "not_for_this_key")


def test_an_unusable_buyer_key_is_refused_when_the_purchase_is_taken_up():
    with pytest.raises(SealError) as e:
        Sealer(ephemeral_key(b"s", CHAIN, MARKET, 1), bytes(32), CHAIN, MARKET, 1)  # the all-zero point
    assert e.value.reason == "bad_key"


def test_key_files_are_private_and_never_overwritten(tmp_path):
    path = tmp_path / "buyer.x25519"
    key = new_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_bytes(read_key_file(path)) == public_bytes(key)
    with pytest.raises(SealError):
        new_key_file(path)
    path.write_text("not a key")
    with pytest.raises(SealError) as e:
        read_key_file(path)
    assert e.value.reason == "bad_key"


# -- the endpoint ----------------------------------------------------------------------------------

def test_an_endpoint_names_broker_topic_and_credentials():
    e = parse_endpoint("mqtts://me:p%40ss@broker.example.org/readings/pebble", 9)
    assert (e.host, e.port, e.topic, e.tls, e.username, e.password) == \
        ("broker.example.org", 8883, "readings/pebble", True, "me", "p@ss")
    assert e.display == "mqtts://broker.example.org:8883/readings/pebble"  # no password in logs
    assert parse_endpoint("mqtt://10.1.2.3:1884", 9).topic == "w3gate/market/9"


@pytest.mark.parametrize("url", ["", "http://example.org/x", "file:///etc/passwd", "mqtt://", "mqtt://h:99999/t",
                                 "mqtt://h/a/+/b", "mqtt://h/a/#", "mqtt://h/t?x=1", "mqtt://h/t\n",
                                 "mqtt://h/" + "t" * 300, "mqtt://h/a%00b"])
def test_endpoints_the_gateway_will_not_deliver_to(url):
    with pytest.raises(EndpointError):
        parse_endpoint(url, 1)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "192.168.1.2", "169.254.1.1", "[::1]", "localhost"])
def test_loopback_and_private_brokers_are_refused_unless_allowed(host):
    endpoint = parse_endpoint(f"mqtt://{host}:1883/t", 1)
    with pytest.raises(EndpointError) as e:
        resolve(endpoint, allow_private=False)
    assert e.value.reason == "private_endpoint"
    assert resolve(endpoint, allow_private=True)


# -- the window ------------------------------------------------------------------------------------

def test_the_window_runs_from_the_first_second_of_its_first_block_to_the_last_second_of_its_last():
    open_ = Window.at(100, 106, 1_000, reached=103, reached_time_s=1_003)
    assert open_.decide(999_999) == "skip"
    assert open_.decide(1_000_000) == "deliver"
    assert open_.decide(1_003_999) == "deliver"
    assert open_.decide(1_004_000) is None  # the chain has not reached it yet
    closed = Window.at(100, 106, 1_000, reached=105, reached_time_s=1_005)
    assert closed.closed and closed.decide(1_005_999) == "deliver" and closed.decide(1_006_000) == "skip"


# -- readings, the log and the tree ----------------------------------------------------------------

def _doc(seq: int) -> dict:
    payload = base64.b64encode(b"payload %d" % seq).decode()
    return {"seq": seq, "rx": 1_700_000_000.123 + seq, "device": "351358810263514", "kind": "data",
            "wire": "protobuf", "ts": 1_700_000_000, "digest": "00" * 32, "trust": "secure_element",
            "payload": payload, "signature": "11" * 64, "state": "accepted", "address": "0x" + "22" * 20}


def test_a_reading_carries_what_its_leaf_commits_to(monkeypatch):
    from gateway.codec import record

    monkeypatch.setattr(record.Record, "signature", property(lambda self: bytes.fromhex("11" * 64)))
    leaf, plaintext = reading(_doc(5), "0x" + "22" * 20)
    r = check_reading(plaintext, leaf)
    assert r["seq"] == 5 and "state" not in r["record"]
    forged = json.loads(plaintext)
    forged["record"]["payload"] = base64.b64encode(b"other").decode()
    with pytest.raises(DeliveryError) as e:
        check_reading(json.dumps(forged).encode(), leaf)
    assert e.value.reason == "wrong_payload"
    with pytest.raises(DeliveryError) as e:
        check_reading(plaintext, bytes(32))
    assert e.value.reason == "wrong_leaf"


def test_the_delivery_tree_is_sorted_and_proves_a_reading_left_out():
    leaves = [merkle.keccak256(bytes([i])) for i in range(9)]
    delivered, withheld = leaves[:4] + leaves[5:], leaves[4]
    root = delivery_root(delivered)
    assert root == delivery_root(list(reversed(delivered)))  # the order of delivery does not matter
    proof = gap_proof(delivered, withheld)
    assert check_gap(proof, withheld, root)
    assert not check_gap(proof, withheld, delivery_root(leaves))  # against a tree that has it
    with pytest.raises(DeliveryError):
        gap_proof(leaves, withheld)
    for outside in (b"\x00" * 32, b"\xff" * 32):  # before the first and after the last leaf
        assert check_gap(gap_proof(delivered, outside), outside, root)
    assert delivery_root([]) == EMPTY_ROOT and check_gap(gap_proof([], withheld), withheld, EMPTY_ROOT)


def test_the_delivery_log_survives_a_torn_last_entry(tmp_path):
    log = DeliveryLog(tmp_path / "7.log")
    log.append([(1, b"\x01" * 32), (4, b"\x04" * 32)])
    with open(tmp_path / "7.log", "ab") as f:
        f.write(ENTRY.pack(9, b"\x09" * 32)[:17])  # the power went mid-write
    again = DeliveryLog(tmp_path / "7.log")
    assert again.entries == [(1, b"\x01" * 32), (4, b"\x04" * 32)] and again.last_seq == 4
    assert (tmp_path / "7.log").stat().st_size == 2 * ENTRY.size
