"""Legacy devices: the gateway admits a frame only with the device's MAC, a fresh seq and within
its rate, and attests what it admitted with the node key."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from device_fw import frame as wire
from gateway.codec.record import Record
from gateway.errors import Rejection
from gateway.legacy.attest import Attester, attestation_digest
from gateway.legacy.registry import LegacyRegistry, new_legacy_device
from gateway.legacy.verifier import LegacyVerifier, SeqWindow
from gateway.proofs.leaf import leaf_fields
from gateway.verify.registry import RegistryError
from gateway.verify.secp256k1 import recover


@pytest.fixture
def registry(tmp_path):
    reg = LegacyRegistry(tmp_path / "legacy_devices.json")
    reg.add(new_legacy_device("greenhouse", transport="serial", config={"period_ms": 1000}))
    return reg


def raw(device, seq, payload=b'{"temperature":21.5}', frame_type=wire.READING, key=None):
    """The frame as a link delivers it to the verifier: COBS bytes without delimiters."""
    return wire.encode(frame_type, bytes.fromhex(device.device_id), seq, payload, key or device.key_bytes)[1:-1]


def reason(verifier, data) -> str:
    with pytest.raises(Rejection) as e:
        verifier.check(data)
    return e.value.reason


def test_a_frame_with_the_device_mac_and_a_new_seq_is_admitted(registry):
    device = next(iter(registry))
    checked = LegacyVerifier(registry).check(raw(device, 7))
    assert (checked.device.name, checked.kind, checked.seq) == ("greenhouse", "data", 7)
    assert json.loads(checked.payload) == {"temperature": 21.5}


def test_each_kind_of_bad_frame_is_refused_with_its_own_reason(registry):
    device = next(iter(registry))
    verifier = LegacyVerifier(registry)
    good = raw(device, 1)
    assert reason(verifier, good[:-3]) == "corrupt"  # cut short on the line
    flipped = bytearray(good)
    flipped[20] ^= 0x01
    assert reason(verifier, bytes(flipped)) == "corrupt"  # CRC catches line noise
    assert reason(verifier, raw(device, 1, key=os.urandom(32))) == "bad_mac"  # intact, wrong key
    stranger = new_legacy_device("stranger", transport="serial")
    assert reason(verifier, raw(stranger, 1)) == "unknown_device"
    assert reason(verifier, raw(device, 1, frame_type=wire.CONFIG)) == "unsupported"  # devices never send it
    assert reason(verifier, raw(device, 2, payload=b"not json")) == "malformed"
    verifier.check(good)
    assert reason(verifier, good) == "replay"


def test_replayed_and_very_old_seqs_are_refused_but_late_ones_inside_the_window_are_not():
    window = SeqWindow()
    for seq in (10, 12, 11):  # 11 arrives late, on another link
        assert window.check(seq) is None
        window.accept(seq)
    assert "already accepted" in window.check(11)
    assert window.check(9) is None  # never seen, inside the window
    window.accept(200)
    assert "far below" in window.check(100)
    assert window.check(201) is None


def test_seqs_remembered_from_before_a_restart_stay_spent(registry):
    device = next(iter(registry))
    verifier = LegacyVerifier(registry)
    verifier.remember(device.device_id, 500)
    assert reason(verifier, raw(device, 480)) == "replay"
    assert verifier.check(raw(device, 501)).seq == 501


def test_a_device_flooding_the_link_is_rate_limited_and_recovers(registry):
    device = next(iter(registry))
    now = [1000.0]
    verifier = LegacyVerifier(registry, rate=10, burst=5, clock=lambda: now[0])
    results = []
    for seq in range(8):
        try:
            verifier.check(raw(device, seq))
            results.append("ok")
        except Rejection as e:
            results.append(e.reason)
    assert results == ["ok"] * 5 + ["rate_limited"] * 3
    now[0] += 0.2  # two tokens back at 10/s
    assert verifier.check(raw(device, 100)).seq == 100


def test_the_record_is_attested_by_the_node_key_and_proves_like_any_other(registry):
    device = next(iter(registry))
    node_key = PrivateKey()
    attester = Attester(node_key.secret)
    checked = LegacyVerifier(registry).check(raw(device, 3))
    doc = attester.record(checked, 1767225600.1234)
    assert doc["trust"] == "gateway-attested" and doc["address"] == attester.address
    assert doc["device"] == device.device_id and doc["device_seq"] == 3
    assert Record(doc).values() == {"temperature": 21.5} and Record(doc).event_type == "LEGACY_DATA"
    # anyone can check the attestation: the signer recovers to the gateway's address
    fields = leaf_fields({**doc, "seq": 1}, doc["address"])
    digest = attestation_digest(bytes.fromhex(fields["payload_sha256"]), fields["received_ms"])
    assert fields["payload_sha256"] == hashlib.sha256(checked.frame).hexdigest()
    assert attester.address in {key.address for _, key in recover(digest, bytes.fromhex(fields["signature"]))}


def test_the_registry_keeps_keys_private_and_never_prints_them(registry, tmp_path):
    device = next(iter(registry))
    assert stat.S_IMODE(os.stat(tmp_path / "legacy_devices.json").st_mode) == 0o600
    assert device.key not in repr(device) and "key" not in device.public_dict()
    with pytest.raises(RegistryError, match="already named"):
        registry.add(new_legacy_device("greenhouse", transport="ble"))
    with pytest.raises(RegistryError, match="period_ms"):
        new_legacy_device("x", transport="serial", config={"period_ms": 5})


def test_config_seqs_only_grow(registry):
    device = next(iter(registry))
    _, first = registry.next_config(device.device_id)
    _, second = registry.next_config(device.device_id)
    assert second > first > 0
    assert registry.get(device.device_id).config_seq == second


# -- hostile input: replays do not cost the real sensor, seqs wrap ---------------------------------


def test_a_flood_of_replayed_frames_costs_the_real_sensor_no_frame(registry):
    device = next(iter(registry))
    now = [1000.0]
    verifier = LegacyVerifier(registry, rate=10, burst=5, clock=lambda: now[0])
    sniffed = raw(device, 1)
    verifier.check(sniffed)
    assert {reason(verifier, sniffed) for _ in range(1000)} == {"replay"}
    forged = raw(device, 2, key=os.urandom(32))
    assert {reason(verifier, forged) for _ in range(1000)} == {"bad_mac"}
    # the sensor's own burst is untouched: 4 tokens left of 5
    assert [verifier.check(raw(device, seq)).seq for seq in range(2, 6)] == [2, 3, 4, 5]
    assert reason(verifier, raw(device, 6)) == "rate_limited"


def test_a_sensor_crossing_the_top_of_the_u32_seq_keeps_being_accepted(registry):
    device = next(iter(registry))
    verifier = LegacyVerifier(registry, rate=1e9, burst=1e9)
    top = 2**32 - 1
    seqs = [top - 2, top - 1, top, 0, 1, 2]
    assert [verifier.check(raw(device, seq)).seq for seq in seqs] == seqs
    assert verifier.high_water() == {device.device_id: 2}
    # and across a restart: the high-water mark is the wrapped seq, later ones still pass
    restarted = LegacyVerifier(registry)
    restarted.remember(device.device_id, top)  # records from before the wrap ...
    restarted.remember(device.device_id, 2)  # ... and after it, in any order
    restarted.remember(device.device_id, top - 1)
    assert restarted.check(raw(device, 3)).seq == 3


def test_a_replay_after_the_wrap_is_still_refused(registry):
    device = next(iter(registry))
    verifier = LegacyVerifier(registry, rate=1e9, burst=1e9)
    top = 2**32 - 1
    frames = {seq: raw(device, seq, payload=b'{"n":%d}' % seq) for seq in (top - 100, top - 1, top, 0, 1)}
    for frame in frames.values():
        verifier.check(frame)
    for seq, frame in frames.items():
        assert reason(verifier, frame) == "replay", seq
    # frames a long way behind, whichever side of the wrap they were sent on
    assert reason(verifier, raw(device, 2**31 + 5)) == "replay"
    assert reason(verifier, raw(device, top - 70)) == "replay"
    verifier.check(raw(device, 5))  # a gap ahead (frames lost on the line) is fine


def test_a_sensor_rebooting_across_the_wrap_is_accepted(registry):
    """The firmware resumes at its reserved block (up to 256 ahead) and says HELLO first."""
    device = next(iter(registry))
    verifier = LegacyVerifier(registry)
    verifier.remember(device.device_id, 2**32 - 10)
    hello = verifier.check(raw(device, 200, payload=b'{"boot":2}', frame_type=wire.HELLO))
    assert (hello.kind, hello.seq) == ("hello", 200)
    assert reason(verifier, raw(device, 2**32 - 5)) == "replay"


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 2**32 - 1), steps=st.lists(st.integers(1, 300), min_size=1, max_size=40),
       replays=st.lists(st.integers(0, 1000), max_size=40))
def test_property_every_fresh_frame_passes_and_every_replay_is_refused(start, steps, replays):
    """Any run of growing seqs (gaps, reboots, the u32 wrap) interleaved with replays of any
    frame already accepted: the sensor loses nothing, the attacker gets nothing in."""
    device = new_legacy_device("s", transport="serial")
    registry = {device.device_id: device}
    verifier = LegacyVerifier(_Dict(registry), rate=1e9, burst=1e9)
    sent: list[bytes] = []
    seq = start
    for i, step in enumerate(steps):
        frame = raw(device, seq, payload=b'{"i":%d}' % i)
        assert verifier.check(frame).seq == seq
        sent.append(frame)
        for r in replays[i:i + 2]:
            assert reason(verifier, sent[r % len(sent)]) == "replay"
        seq = (seq + step) % 2**32


class _Dict:
    """The registry's lookup, without a file (hypothesis runs the test hundreds of times)."""

    def __init__(self, devices: dict) -> None:
        self.devices = devices

    def get(self, device_id: str):
        return self.devices.get(device_id)
