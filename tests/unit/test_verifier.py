"""Verification: the real vectors verify, every tampered byte fails, and each kind of bad input
is refused with its named reason."""
from __future__ import annotations

import hashlib

import pytest
from coincurve import PrivateKey

from gateway.codec import pebble
from gateway.errors import Rejection
from gateway.verify import secp256k1, verifier as verifier_module
from gateway.verify.registry import Registry, make_device
from gateway.verify.secp256k1 import Key, flip_s, is_low_s
from gateway.verify.verifier import Policy, Verifier

A_TIME, B_TIME, C_TIME = 1718757942, 1718656562, 1621943329


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "devices.json")


def make_verifier(registry, now, **policy):
    return Verifier(registry, Policy(**policy), clock=lambda: now)


def register_vector(registry, v, *, by="address", owner=None):
    ident = {"address": v["address"]} if by == "address" else {"public_key": v["public_key_uncompressed_hex"]}
    registry.add(make_device(v["imei"], owner=owner, **ident))


# -- the real vectors ---------------------------------------------------------------------------

@pytest.mark.parametrize("by", ["address", "public_key"])
def test_vector_a_high_s_data_verifies(registry, vectors, by):
    a = vectors["A"]
    register_vector(registry, a, by=by)
    accepted = make_verifier(registry, A_TIME).data(a["imei"], bytes.fromhex(a["payload_hex"]))
    assert accepted.kind == "data"
    assert accepted.digest.hex() == a["sha256_hex"]
    assert accepted.body.reading()["temperature"] == 20.77
    assert not is_low_s(bytes.fromhex(a["binpackage"]["signature_hex"]))


def test_vector_a_low_s_form_verifies_too(registry, vectors):
    a = vectors["A"]
    register_vector(registry, a)
    package = pebble.decode_binpackage(bytes.fromhex(a["payload_hex"]))
    low = pebble.encode_binpackage(pebble.BinPackage(0, package.data, package.timestamp, flip_s(package.signature)))
    assert make_verifier(registry, A_TIME).data(a["imei"], low).digest.hex() == a["sha256_hex"]


def test_a_malleated_copy_of_an_accepted_message_is_a_replay(registry, vectors):
    a = vectors["A"]
    register_vector(registry, a)
    v = make_verifier(registry, A_TIME)
    payload = bytes.fromhex(a["payload_hex"])
    v.data(a["imei"], payload)
    package = pebble.decode_binpackage(payload)
    flipped = pebble.encode_binpackage(pebble.BinPackage(0, package.data, package.timestamp, flip_s(package.signature)))
    for again in (payload, flipped):
        with pytest.raises(Rejection) as e:
            v.data(a["imei"], again)
        assert e.value.reason == "replay"


def test_vector_b_confirm_verifies_and_binds_the_proposer(registry, vectors):
    b = vectors["B"]
    register_vector(registry, b, owner=b["registered_device_record"]["owner"])
    accepted = make_verifier(registry, B_TIME).confirm(b["imei"], bytes.fromhex(b["payload_hex"]))
    assert accepted.kind == "confirm"
    assert accepted.digest.hex() == b["sha256_hex"]


def test_confirm_naming_another_owner_is_refused(registry, vectors):
    b = vectors["B"]
    register_vector(registry, b, owner="0x" + "11" * 20)
    with pytest.raises(Rejection) as e:
        make_verifier(registry, B_TIME).confirm(b["imei"], bytes.fromhex(b["payload_hex"]))
    assert e.value.reason == "wrong_owner"


def test_confirm_without_a_proposal_is_refused(registry, vectors):
    b = vectors["B"]
    register_vector(registry, b)
    with pytest.raises(Rejection) as e:
        make_verifier(registry, B_TIME).confirm(b["imei"], bytes.fromhex(b["payload_hex"]))
    assert e.value.reason == "not_proposed"


def test_vector_c_g1_json_verifies(registry, vectors):
    c = vectors["C"]
    registry.add(make_device("352656100000001", address=c["address"], profile="g1"))
    payload = c["payload_text"].encode()
    accepted = make_verifier(registry, C_TIME).data("352656100000001", payload)
    assert accepted.wire == "json" and accepted.digest.hex() == c["sha256_hex"]


def test_g1_message_whose_embedded_key_is_not_the_device_is_refused(registry, vectors):
    c = vectors["C"]
    registry.add(make_device("352656100000001", address="0x" + "22" * 20, profile="g1"))
    with pytest.raises(Rejection) as e:
        make_verifier(registry, C_TIME).data("352656100000001", c["payload_text"].encode())
    assert e.value.reason == "bad_signature"


# -- tampering ----------------------------------------------------------------------------------

def _tampered_a(a):
    """Every single-byte change of data, timestamp and signature, re-encoded as a BinPackage."""
    package = pebble.decode_binpackage(bytes.fromhex(a["payload_hex"]))
    for i in range(len(package.data)):
        data = bytearray(package.data)
        data[i] ^= 0x01
        yield f"data[{i}]", pebble.BinPackage(0, bytes(data), package.timestamp, package.signature)
    for delta in (1, -1, 1 << 8, 1 << 24):
        yield f"timestamp{delta:+}", pebble.BinPackage(0, package.data, package.timestamp + delta, package.signature)
    for i in range(64):
        sig = bytearray(package.signature)
        sig[i] ^= 0x01
        yield f"signature[{i}]", pebble.BinPackage(0, package.data, package.timestamp, bytes(sig))
    yield "type", pebble.BinPackage(1, package.data, package.timestamp, package.signature)


def test_any_changed_byte_of_data_timestamp_or_signature_fails(registry, vectors):
    a = vectors["A"]
    register_vector(registry, a)
    v = make_verifier(registry, A_TIME, max_age_s=1e9, max_future_s=1e9)
    reasons = {}
    for where, package in _tampered_a(a):
        with pytest.raises(Rejection) as e:
            v.data(a["imei"], pebble.encode_binpackage(package))
        reasons[where] = e.value.reason
    assert set(reasons.values()) <= {"bad_signature", "malformed"}, reasons
    assert reasons["timestamp+1"] == "bad_signature" and reasons["signature[5]"] == "bad_signature"
    v.data(a["imei"], bytes.fromhex(a["payload_hex"]))  # the original still verifies afterwards


def test_tampered_confirm_fails(registry, vectors):
    b = vectors["B"]
    register_vector(registry, b, owner=b["registered_device_record"]["owner"])
    confirm = pebble.decode_confirm(bytes.fromhex(b["payload_hex"]))
    forged = pebble.ConfirmPackage(confirm.owner, confirm.timestamp + 1, confirm.signature, confirm.channel)
    with pytest.raises(Rejection) as e:
        make_verifier(registry, B_TIME).confirm(b["imei"], pebble.encode_confirm(forged))
    assert e.value.reason == "bad_signature"


def test_tampered_g1_text_fails(registry, vectors):
    c = vectors["C"]
    registry.add(make_device("352656100000001", address=c["address"], profile="g1"))
    payload = c["payload_text"].replace('"light":0', '"light":1').encode()
    with pytest.raises(Rejection) as e:
        make_verifier(registry, C_TIME).data("352656100000001", payload)
    assert e.value.reason == "bad_signature"


# -- freshly signed messages: keys, windows, nonces ----------------------------------------------

class Signer:
    def __init__(self, imei="353000000000001"):
        self.imei, self.key = imei, PrivateKey()
        self.address = Key(self.key.public_key.format(compressed=False)).address

    def data(self, timestamp, nonce="0123456789abcdef", temperature=2100, low_s=True):
        body = pebble.encode_sensor_data(pebble.SensorData(temperature=temperature, temperature2=temperature,
                                                           random=nonce))
        preimage = bytes(4) + body + timestamp.to_bytes(4, "big")
        sig = secp256k1.sign(self.key, hashlib.sha256(preimage).digest(), low_s=low_s)
        return pebble.encode_binpackage(pebble.BinPackage(0, body, timestamp, sig))


@pytest.fixture
def signer(registry):
    s = Signer()
    registry.add(make_device(s.imei, address=s.address))
    return s


def test_recovered_key_is_cached_so_the_steady_state_is_one_verify(registry, signer, monkeypatch):
    calls = []
    real = verifier_module.recover
    monkeypatch.setattr(verifier_module, "recover", lambda *a: calls.append(1) or real(*a))
    v = make_verifier(registry, 1_800_000_000)
    for i in range(5):
        v.data(signer.imei, signer.data(1_800_000_000, nonce=f"{i:016x}"))
    assert len(calls) == 1


def test_key_cache_follows_a_registry_change(registry, signer):
    v = make_verifier(registry, 1_800_000_000)
    v.data(signer.imei, signer.data(1_800_000_000, nonce="a" * 16))
    other = Signer(signer.imei)
    registry.update(signer.imei, address=other.address)
    with pytest.raises(Rejection) as e:
        v.data(signer.imei, signer.data(1_800_000_000, nonce="b" * 16))
    assert e.value.reason == "bad_signature"
    v.data(signer.imei, other.data(1_800_000_000, nonce="c" * 16))


@pytest.mark.parametrize("offset,reason", [(-601, "stale"), (121, "future")])
def test_timestamps_outside_the_window_are_refused(registry, signer, offset, reason):
    now = 1_800_000_000
    with pytest.raises(Rejection) as e:
        make_verifier(registry, now).data(signer.imei, signer.data(now + offset))
    assert e.value.reason == reason


def test_window_is_configurable(registry, signer):
    now = 1_800_000_000
    make_verifier(registry, now, max_age_s=3600).data(signer.imei, signer.data(now - 1800))


def test_a_repeated_nonce_with_other_data_is_refused(registry, signer):
    now = 1_800_000_000
    v = make_verifier(registry, now)
    v.data(signer.imei, signer.data(now, nonce="feedfacecafebeef", temperature=2000))
    with pytest.raises(Rejection) as e:
        v.data(signer.imei, signer.data(now + 1, nonce="feedfacecafebeef", temperature=2001))
    assert e.value.reason == "nonce_reuse"


def test_high_s_signatures_from_a_fresh_key_verify(registry, signer):
    now = 1_800_000_000
    v = make_verifier(registry, now)
    for i in range(20):
        v.data(signer.imei, signer.data(now, nonce=f"{i:016x}", low_s=False))


def test_unknown_device_is_refused(registry, signer):
    with pytest.raises(Rejection) as e:
        make_verifier(registry, 1_800_000_000).data("359999999999999", signer.data(1_800_000_000))
    assert e.value.reason == "unknown_device"


@pytest.mark.parametrize("payload,reason", [
    (b"\x00" * 2000, "oversized"),
    (b"", "malformed"),
    (b"\x08\x00\x12", "malformed"),
    (b"{not json", "malformed"),
    (b'{"message":{"timestamp":"1"},"signature":{"r":"zz","s":"00"}}', "malformed"),
])
def test_bad_payloads_get_named_reasons(registry, signer, payload, reason):
    with pytest.raises(Rejection) as e:
        make_verifier(registry, 1_800_000_000).data(signer.imei, payload)
    assert e.value.reason == reason


def test_state_packages_are_unsupported(registry, signer):
    payload = pebble.encode_binpackage(pebble.BinPackage(2, b"\x08\x01", 1_800_000_000, b"\x00" * 64))
    with pytest.raises(Rejection) as e:
        make_verifier(registry, 1_800_000_000).data(signer.imei, payload)
    assert e.value.reason == "unsupported"


def test_two_devices_confirming_one_owner_in_the_same_second_are_not_replays(registry):
    owner = "0x" + "ab" * 20
    now = 1_800_000_000
    v = make_verifier(registry, now)
    for imei in ("353000000000011", "353000000000029"):
        s = Signer(imei)
        registry.add(make_device(imei, address=s.address, owner=owner))
        preimage = bytes.fromhex(owner[2:]) + now.to_bytes(4, "big")
        sig = secp256k1.sign(s.key, hashlib.sha256(preimage).digest())
        payload = pebble.encode_confirm(pebble.ConfirmPackage(bytes.fromhex(owner[2:]), now, sig, 8183))
        assert v.confirm(imei, payload).kind == "confirm"
        with pytest.raises(Rejection) as e:
            v.confirm(imei, payload)
        assert e.value.reason == "replay"


def test_a_copy_arriving_while_the_original_is_being_checked_is_a_replay(registry, signer):
    now = 1_800_000_000
    v = make_verifier(registry, now)
    payload = signer.data(now, nonce="1" * 16)
    first = v.admit("data", signer.imei, payload)
    with pytest.raises(Rejection) as e:
        v.admit("data", signer.imei, payload)  # the first one's signature is still being checked
    assert e.value.reason == "replay"
    assert v.conclude(first, first.key.verify(first.digest, first.signature)).kind == "data"


def test_a_failed_signature_check_is_refused_and_not_remembered(registry, signer):
    now = 1_800_000_000
    v = make_verifier(registry, now)
    admitted = v.admit("data", signer.imei, signer.data(now, nonce="2" * 16))
    with pytest.raises(Rejection) as e:
        v.conclude(admitted, False)
    assert e.value.reason == "bad_signature"
    assert not v.replay.seen(signer.imei, now, admitted.digest)
