"""Device-records credentials (docs/credentials.md): what the node signs verifies, and every
change, forgery or hostile file is refused with a reason; `w3gate vc verify` exits 0 valid,
1 invalid, 3 cannot tell. The chain checks run on anvil in tests/hil/test_vc.py."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import socket

import pytest
from click.testing import CliRunner
from eth_account import Account
from eth_keys import keys

from gateway.cli import main
from gateway.credentials import vc
from gateway.credentials.subject import LEGACY_OWNER_NOTE, collect
from gateway.layout import DataDir

NODE = Account.from_key(bytes(range(1, 33)))
ATTACKER = Account.from_key(bytes(range(2, 34)))
DEVICE = "0x" + "ab" * 20
OWNER = "0x" + "0c" * 20
REGISTRY = "0x" + "cd" * 20
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
T0 = (NOW - 3600) * 1000  # the window: the hour before


def subject(**changes) -> vc.Subject:
    batches = (vc.Anchor("0x" + "11" * 32, 4, 10, T0 + 1_000, T0 + 60_000, "0x" + "21" * 32, 70, 2),
               vc.Anchor("0x" + "12" * 32, 5, 8, T0 + 60_001, T0 + 120_000, "0x" + "22" * 32, 75, 1))
    s = vc.Subject("350916067070535", "pebble", vc.did_of(DEVICE), "secure-element", vc.did_of(OWNER), None,
                   T0, T0 + 3_600_000, 3, T0 + 2_000, T0 + 100_000, 0, 31337, REGISTRY, batches)
    return dataclasses.replace(s, **changes)


def issue(s: vc.Subject | None = None, *, key=NODE, issuer: str | None = None, expires_ms=None) -> str:
    """A credential as `w3gate vc issue` makes it (``issuer`` defaults to the key's own address)."""
    if issuer is None:
        return vc.build(s or subject(), key.address, bytes(key.key), now=NOW, expires_ms=expires_ms)
    header = {"alg": "ES256K", "typ": "JWT", "kid": vc.did_of(issuer) + "#key-0", "jwk": vc.public_jwk(bytes(key.key))}
    return vc.sign_jwt(header, payload_of(issue(s)) | {"iss": vc.did_of(issuer)}, bytes(key.key))


def parts(token: str) -> tuple[dict, dict, str]:
    h, p, sig = token.split(".")
    return json.loads(vc._unb64url(h, "h")), json.loads(vc._unb64url(p, "p")), sig


def payload_of(token: str) -> dict:
    return parts(token)[1]


def reassemble(header: dict, payload: dict, signature: str) -> str:
    return f"{vc.b64url(json.dumps(header).encode())}.{vc.b64url(json.dumps(payload).encode())}.{signature}"


def resign(header: dict, payload: dict, key=NODE) -> str:
    return vc.sign_jwt(header, payload, bytes(key.key))


def outcome(token) -> str:
    verdict = vc.verify(token, None, now=NOW)
    assert verdict.ok or verdict.detail, "an invalid credential always says why"
    return verdict.reason


# -- what the node signs -------------------------------------------------------------------------

def test_a_credential_signed_by_the_node_key_verifies_offline_and_states_the_device_owner_and_anchors():
    token = issue()
    verdict = vc.verify(token, None, now=NOW)
    assert verdict.ok and verdict.reason == "valid", verdict.detail
    header, payload, _ = parts(token)
    assert header["alg"] == "ES256K" and header["kid"] == vc.did_of(NODE.address) + "#key-0"
    assert payload["iss"] == vc.did_of(NODE.address) and payload["sub"] == vc.did_of(DEVICE)
    assert payload["vc"]["type"] == ["VerifiableCredential", "DeviceRecordsCredential"]
    claims = payload["vc"]["credentialSubject"]
    assert claims["owner"] == vc.did_of(OWNER) and claims["records"]["count"] == 3
    assert [b["tx"] for b in claims["anchors"]["batches"]] == ["0x" + "21" * 32, "0x" + "22" * 32]
    assert any("offline" in note for note in verdict.notes)


def test_a_stranger_recovers_the_issuer_from_the_signature_and_sha256_alone():
    """No JOSE library needed: SHA-256 of the signing input, r‖s, recovery → the issuer's address."""
    token = issue()
    signing_input, signature = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    digest = hashlib.sha256(signing_input.encode()).digest()
    signers = {keys.Signature(raw + bytes([v])).recover_public_key_from_msg_hash(digest).to_checksum_address()
               for v in (0, 1)}
    assert NODE.address in signers
    assert int.from_bytes(raw[32:], "big") <= vc._N // 2  # low s


def test_a_legacy_sensor_has_no_did_and_its_credential_says_why_it_has_no_owner():
    s = subject(kind="legacy", did=None, trust="gateway-attested", owner=None, owner_note=LEGACY_OWNER_NOTE,
                device="a1b2c3d4e5f60718")
    payload = payload_of(issue(s))
    assert "sub" not in payload and "id" not in payload["vc"]["credentialSubject"]
    assert payload["vc"]["credentialSubject"]["ownerNote"] == LEGACY_OWNER_NOTE
    assert outcome(issue(s)) == "valid"


@pytest.mark.parametrize("when,expected_ms", [
    ("2026-01-01T00:00:00Z", NOW * 1000), ("2026-01-01T01:00:00+01:00", NOW * 1000),
    ("2026-01-01T00:00:00", NOW * 1000), ("2026-01-01T00:00:00.250Z", NOW * 1000 + 250),
    (str(NOW), NOW * 1000), (f"{NOW}.5", NOW * 1000 + 500), ("now", NOW * 1000),
])
def test_times_are_iso_8601_or_epoch_seconds(when, expected_ms):
    assert vc.parse_time(when, now=NOW) == expected_ms


@pytest.mark.parametrize("when", ["yesterday", "", "1e999", "nan", "-5", "2026-13-01T00:00:00Z"])
def test_a_time_that_is_neither_is_a_readable_error(when):
    with pytest.raises(vc.CredentialError) as e:
        vc.parse_time(when)
    assert e.value.reason == "bad_time"


# -- tampering and forgery -----------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    lambda p: p["vc"]["credentialSubject"]["records"].update(count=4, anchored=4),
    lambda p: p["vc"]["credentialSubject"].update(device="350916067070536"),
    lambda p: p["vc"]["credentialSubject"].update(owner=vc.did_of(ATTACKER.address)),
    lambda p: p["vc"]["credentialSubject"]["anchors"]["batches"][0].update(root="0x" + "99" * 32),
    lambda p: p["vc"]["credentialSubject"]["anchors"]["batches"][1].update(tx="0x" + "98" * 32),
    lambda p: p.update(exp=NOW + 10),
    lambda p: p.pop("jti"),
], ids=["count", "device", "owner", "root", "tx", "exp", "jti"])
def test_any_change_to_a_signed_credential_breaks_its_signature(change):
    header, payload, signature = parts(issue())
    change(payload)
    assert outcome(reassemble(header, payload, signature)) == "bad_signature"


def test_a_changed_header_breaks_the_signature_too():
    header, payload, signature = parts(issue())
    header["kid"] = header["kid"].replace("key-0", "key-1")
    assert outcome(reassemble(header, payload, signature)) == "bad_signature"


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "ES256", "RS256", "ES256K-R", "", None])
def test_alg_none_and_every_other_algorithm_is_refused(alg):
    header, payload, signature = parts(issue())
    header = {**header, "alg": alg} if alg is not None else {k: v for k, v in header.items() if k != "alg"}
    assert outcome(reassemble(header, payload, "" if alg in ("none", "None") else signature)) == "bad_alg"


def test_an_attackers_own_key_cannot_speak_for_the_node():
    """Re-signed by another key, with that key in the header: the key is not the issuer DID's."""
    header, payload, _ = parts(issue())
    header["jwk"] = vc.public_jwk(bytes(ATTACKER.key))
    assert outcome(resign(header, payload, ATTACKER)) == "wrong_issuer"


def test_the_nodes_signature_does_not_verify_under_another_key_in_the_header():
    header, payload, signature = parts(issue())
    header["jwk"] = vc.public_jwk(bytes(ATTACKER.key))
    assert outcome(reassemble(header, payload, signature)) == "bad_signature"


def test_a_credential_naming_another_did_than_its_signers_is_refused():
    assert outcome(issue(issuer=ATTACKER.address)) == "wrong_issuer"


def test_a_kid_of_another_did_is_refused():
    header, payload, _ = parts(issue())
    header["kid"] = vc.did_of(ATTACKER.address) + "#key-0"
    assert outcome(resign(header, payload)) == "wrong_issuer"


@pytest.mark.parametrize("jwk", [
    {"kty": "EC", "crv": "P-256", "x": vc.b64url(bytes(32)), "y": vc.b64url(bytes(32))},
    {"kty": "EC", "crv": "secp256k1", "x": vc.b64url(bytes(32)), "y": vc.b64url(bytes(32))},  # not on the curve
    {"kty": "EC", "crv": "secp256k1", "x": vc.b64url(bytes(31)), "y": vc.b64url(bytes(32))},
    {"kty": "EC", "crv": "secp256k1", "x": "!!", "y": "??"},
    {**vc.public_jwk(bytes(NODE.key)), "d": vc.b64url(bytes(NODE.key))},
    "did:io:0x..", None,
], ids=["p256", "off-curve", "short", "not-base64", "private", "string", "missing"])
def test_a_header_key_that_is_not_a_secp256k1_public_key_is_refused(jwk):
    header, payload, signature = parts(issue())
    header = {**header, "jwk": jwk} if jwk is not None else {k: v for k, v in header.items() if k != "jwk"}
    assert outcome(reassemble(header, payload, signature)) == "bad_key"


def test_an_expired_credential_and_one_from_the_future_are_refused():
    expiring = issue(expires_ms=(NOW + 60) * 1000)
    assert vc.verify(expiring, None, now=NOW).ok
    assert vc.verify(expiring, None, now=NOW + 61).reason == "expired"
    assert vc.verify(issue(), None, now=NOW - 3600).reason == "not_yet_valid"


@pytest.mark.parametrize("changes,reason", [
    ({"count": 4}, "count_mismatch"),  # 3 in batches + 0 unanchored
    ({"unanchored": 1}, "count_mismatch"),
    ({"from_ms": T0 + 3_000}, "time_range"),  # the first record before the window
    ({"to_ms": T0 + 50_000}, "time_range"),
    ({"first_ms": T0 + 200_000}, "time_range"),  # first after last
    ({"to_ms": (NOW + 3600) * 1000}, "time_range"),  # the window ends after issuance: not final
    ({"from_ms": T0 + 3_600_001, "to_ms": T0 + 3_600_000}, "time_range"),
], ids=["count", "unanchored", "before-window", "after-window", "first-after-last", "open-window", "reversed"])
def test_counts_and_time_ranges_that_disagree_are_refused_even_when_the_node_signed_them(changes, reason):
    assert outcome(issue(subject(**changes))) == reason


def test_a_batch_listed_twice_or_holding_more_of_the_device_than_its_count_is_refused():
    a, b = subject().anchors
    twice = subject(anchors=(a, dataclasses.replace(a, records=1)), count=3)
    assert outcome(issue(twice)) == "count_mismatch"
    overfull = subject(anchors=(dataclasses.replace(a, count=1), b))
    assert outcome(issue(overfull)) == "count_mismatch"
    elsewhere = subject(anchors=(a, dataclasses.replace(b, first_ms=T0 + 4_000_000, last_ms=T0 + 4_100_000)))
    assert outcome(issue(elsewhere)) == "time_range"


@pytest.mark.parametrize("claim,value,reason", [
    ("nbf", vc.MS_MAX, "not_yet_valid"), ("exp", 0, "expired"), ("iat", vc.MS_MAX, "not_yet_valid"),
    ("nbf", vc.MS_MAX + 1, "bad_format"),
])
def test_times_past_year_9999_are_refused_with_a_reason(claim, value, reason):
    header, payload, _ = parts(issue())
    payload[claim] = value
    assert outcome(resign(header, payload)) == reason
    far = subject(to_ms=vc.MS_MAX, last_ms=vc.MS_MAX - 1)
    assert outcome(issue(far)) == "time_range"


def test_a_credential_with_its_subject_id_other_than_sub_is_refused():
    header, payload, _ = parts(issue())
    payload["sub"] = vc.did_of(ATTACKER.address)
    assert outcome(resign(header, payload)) == "bad_format"


# -- hostile files -------------------------------------------------------------------------------

def _jwt(header: bytes, payload: bytes, key=NODE) -> str:
    h, p = vc.b64url(header), vc.b64url(payload)
    r = vc.sign_jwt({"alg": "ES256K"}, {}, bytes(key.key)).rsplit(".", 1)[1]  # any 64 bytes
    return f"{h}.{p}.{r}"


@pytest.mark.parametrize("token", [
    b"", b"not a jwt", b"a.b", b"a.b.c.d", b"\xff\xfe.\x00.\x01", "é.é.é".encode(),
    b"!!!.???.***", b"eyJ.eyJ.abc", b"A" * 5 + b"." * 2,
    b"x" * (vc.MAX_SIZE + 1),
    _jwt(b"[1,2]", b"{}").encode(), _jwt(b'{"alg":"ES256K","alg":"none"}', b"{}").encode(),
    _jwt(b"\xff\xfe", b"{}").encode(), _jwt(b"[" * 100_000 + b"]" * 100_000, b"{}").encode(),
    _jwt(b'{"alg":"ES256K","crit":["b64"]}', b"{}").encode(),
    _jwt(b'{"alg":"ES256K","typ":"JOSE+JSON"}', b"{}").encode(),
], ids=["empty", "text", "two-parts", "four-parts", "binary", "unicode", "not-base64", "short-base64",
        "dots", "huge", "header-list", "duplicate-alg", "header-not-utf8", "deep", "crit", "typ"])
def test_a_hostile_file_is_refused_with_a_reason_never_a_traceback(token):
    verdict = vc.verify(token, None, now=NOW)
    assert not verdict.ok and verdict.reason in vc.REASONS, verdict


@pytest.mark.parametrize("change", [
    lambda p: p.update(nbf="yesterday"), lambda p: p.update(nbf=1e999), lambda p: p.update(iat=True),
    lambda p: p.update(vc=[]), lambda p: p["vc"].update(type=["VerifiableCredential"]),
    lambda p: p["vc"].update({"@context": "x"}), lambda p: p["vc"].update(credentialSubject=None),
    lambda p: p["vc"]["credentialSubject"].update(records={"count": "3"}),
    lambda p: p["vc"]["credentialSubject"]["records"].update(count=-1),
    lambda p: p["vc"]["credentialSubject"]["records"].update(firstReceivedMs=2 ** 80),
    lambda p: p["vc"]["credentialSubject"]["anchors"].update(batches={}),
    lambda p: p["vc"]["credentialSubject"]["anchors"]["batches"].append("x"),
    lambda p: p["vc"]["credentialSubject"]["anchors"]["batches"][0].update(root="0x12"),
    lambda p: p["vc"]["credentialSubject"]["anchors"]["batches"][0].update(block=None),
    lambda p: p["vc"]["credentialSubject"]["anchors"].update(registry="nowhere"),
    lambda p: p["vc"]["credentialSubject"].update(deviceKind="toaster"),
    lambda p: p["vc"]["credentialSubject"].update(trust="gateway-attested"),
    lambda p: p["vc"]["credentialSubject"].update(owner="0x" + "0c" * 20),
    lambda p: p["vc"]["credentialSubject"].pop("id"),
    lambda p: p.update(iss="did:web:example.com"),
])
def test_a_signed_credential_with_wrong_types_or_shapes_is_refused_as_bad_format(change):
    header, payload, _ = parts(issue())
    change(payload)
    assert outcome(resign(header, payload)) in ("bad_format", "wrong_issuer")


# -- the command ---------------------------------------------------------------------------------

def run(*args: str):
    return CliRunner().invoke(main, ["vc", "verify", *args], catch_exceptions=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vc_verify_exits_0_when_valid_1_when_invalid_and_3_when_the_chain_cannot_be_asked(tmp_path):
    good = tmp_path / "good.jwt"
    good.write_text(issue(subject(to_ms=T0 + 200_000)) + "\n")  # issued long ago: the window has passed
    result = run(str(good), "--offline")
    assert result.exit_code == 0 and result.output.startswith("valid: 3 records of did:io:0x"), result.output
    header, payload, signature = parts(good.read_text().strip())
    payload["vc"]["credentialSubject"]["records"]["count"] = 30
    bad = tmp_path / "bad.jwt"
    bad.write_text(reassemble(header, payload, signature))
    result = run(str(bad), "--offline")
    assert result.exit_code == 1 and result.output.startswith("INVALID (bad_signature): "), result.output
    result = run(str(good), "--rpc", f"http://127.0.0.1:{_closed_port()}")
    assert result.exit_code == 3 and "cannot tell (chain_unreachable)" in result.output, result.output
    none = tmp_path / "none.jwt"
    none.write_text(reassemble({**header, "alg": "none"}, payload, ""))
    result = run(str(none), "--json", "--offline")
    assert result.exit_code == 1 and json.loads(result.output)["reason"] == "bad_alg"


def test_vc_verify_needs_an_rpc_for_a_chain_that_is_not_iotex(tmp_path):
    good = tmp_path / "good.jwt"
    good.write_text(issue(subject(to_ms=T0 + 200_000)))
    result = CliRunner().invoke(main, ["vc", "verify", str(good)])
    assert result.exit_code == 2 and "chain 31337: give --rpc URL" in result.output


def test_vc_verify_of_a_missing_or_huge_file_is_one_line(tmp_path):
    result = run(str(tmp_path / "nothing.jwt"), "--offline")
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    huge = tmp_path / "huge.jwt"
    huge.write_bytes(b"a" * (vc.MAX_SIZE + 10))
    result = run(str(huge), "--offline")
    assert result.exit_code == 1 and result.output.startswith("INVALID (bad_format): larger than")


# -- from the data directory ---------------------------------------------------------------------

@pytest.fixture
def data(tmp_path):
    """A data dir with six records of one Pebble and two of a legacy sensor, seq 1..8: batch 0
    (records 1-4) anchored, batch 1 (5-6) sealed, not anchored, 7-8 in no batch yet."""
    from gateway.buffer.store import RecordStore
    from gateway.legacy.registry import LegacyRegistry, new_legacy_device
    from gateway.proofs.journal import Batch, BatchJournal
    from gateway.verify.registry import STATUS_CONFIRMED, Registry, make_device

    layout = DataDir(tmp_path / "data")
    layout.root.mkdir()
    Registry(layout.devices).add(make_device("350916067070535", address=DEVICE, owner=OWNER))
    Registry(layout.devices).update("350916067070535", status=STATUS_CONFIRMED)
    sensor = new_legacy_device("greenhouse", transport="serial")
    LegacyRegistry(layout.legacy_devices).add(sensor)
    rx = [T0 / 1000 + 10 * i for i in range(1, 9)]
    pebble = {"device": "350916067070535", "wire": "protobuf", "kind": "data", "address": DEVICE}
    legacy = {"device": sensor.device_id, "wire": "legacy", "kind": "data", "address": NODE.address}
    docs = [{**(legacy if i in (2, 6) else pebble), "rx": t} for i, t in enumerate(rx)]
    with RecordStore(layout.records) as store:
        store.append(docs)
        journal = BatchJournal(layout.proofs, store, writable=True)
        journal.write_meta({"chain_id": 31337, "registry": REGISTRY, "gateway": NODE.address})
        ms = [round(t * 1000) for t in rx]
        journal.append(Batch(0, 1, 4, 4, "0x" + "11" * 32, ms[0], ms[3], NOW, "anchored", 1, "0x" + "21" * 32, 70),
                       bytes(52 * 4))
        journal.append(Batch(1, 5, 6, 2, "0x" + "12" * 32, ms[4], ms[5], NOW), bytes(52 * 2))
    return layout, sensor.device_id, ms


def test_the_subject_counts_the_devices_records_in_the_window_and_their_anchors(data):
    layout, _, ms = data
    s = collect(layout, "350916067070535", T0, ms[3], issuer_address=NODE.address)
    assert (s.count, s.first_ms, s.last_ms, s.unanchored) == (3, ms[0], ms[3], 0)
    assert s.did == vc.did_of(DEVICE) and s.owner == vc.did_of(OWNER)
    assert [(a.sequence, a.records, a.count, a.tx) for a in s.anchors] == [(0, 3, 4, "0x" + "21" * 32)]
    assert (s.chain_id, s.registry) == (31337, REGISTRY)
    assert outcome(issue(s)) == "valid"


def test_unanchored_records_are_refused_by_number_unless_allowed_and_then_stated(data):
    layout, _, ms = data
    with pytest.raises(vc.CredentialError) as e:
        collect(layout, "350916067070535", T0, ms[7], issuer_address=NODE.address)
    assert e.value.reason == "unanchored" and "3 of the 6 records" in e.value.detail
    s = collect(layout, "350916067070535", T0, ms[7], issuer_address=NODE.address, allow_unanchored=True)
    assert (s.count, s.anchored, s.unanchored) == (6, 3, 3)
    assert outcome(issue(s)) == "valid"


def test_a_legacy_sensors_subject_is_attested_by_the_node_and_has_no_owner(data):
    layout, sensor, ms = data
    s = collect(layout, sensor, T0, ms[3], issuer_address=NODE.address)
    assert (s.kind, s.did, s.owner, s.trust, s.count) == ("legacy", None, None, "gateway-attested", 1)
    assert s.owner_note == LEGACY_OWNER_NOTE


def test_an_unconfirmed_owner_is_not_stated_and_the_credential_says_so(data):
    from gateway.verify.registry import STATUS_PROPOSED, Registry

    layout, _, ms = data
    Registry(layout.devices).update("350916067070535", status=STATUS_PROPOSED)
    s = collect(layout, "350916067070535", T0, ms[3], issuer_address=NODE.address)
    assert s.owner is None and "not confirmed" in s.owner_note


@pytest.mark.parametrize("device,window,reason", [
    ("350916067070535", (T0 - 10_000, T0 - 1), "no_records"),
    ("000000000000000", (T0, T0 + 100_000), "no_records"),
    ("350916067070535", (T0 + 100_000, T0), "bad_time"),
])
def test_nothing_to_state_is_refused(data, device, window, reason):
    layout, _, _ = data
    with pytest.raises(vc.CredentialError) as e:
        collect(layout, device, *window, issuer_address=NODE.address)
    assert e.value.reason == reason


def test_a_journal_of_another_gateway_is_refused(data):
    layout, _, ms = data
    with pytest.raises(vc.CredentialError) as e:
        collect(layout, "350916067070535", T0, ms[3], issuer_address=ATTACKER.address)
    assert e.value.reason == "wrong_key"
