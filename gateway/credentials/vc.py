"""Device-records credentials: a W3C Verifiable Credential (VC Data Model 1.1, JWT encoding)
signed by the node's DID key, stating how many records of one device the node received in a
time window and which anchors in the ProofRegistry cover them (docs/credentials.md).

Why JWT-VC with ES256K (RFC 8812: ECDSA over secp256k1 with SHA-256, signature r‖s, 64 bytes)
and the public key as a ``jwk`` in the JOSE header: any JOSE library verifies it as it is, and
the node's DID (``did:io:0x<address>``) names the key by its address, so a stranger binds the
two with one keccak: ``keccak256(x‖y)[12:] == address``. ES256K-R (a recoverable signature)
would spare the ``jwk`` but is registered nowhere and few libraries read it.

Three outcomes of a check, as for ``w3gate proof verify``: valid; ``Invalid`` with the reason
of the first failing check; ``CannotTell`` (gateway/proofs/verify.py) when the chain cannot be
asked. Nothing a credential file holds raises anything else.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from gateway.errors import W3gateError
from gateway.proofs import merkle
from gateway.proofs.verify import ANCHOR_OF, ANCHORED_TOPIC, CannotTell, _RpcError, did_of, rpc

ALG = "ES256K"
TYPES = ["VerifiableCredential", "DeviceRecordsCredential"]
CONTEXT = ["https://www.w3.org/2018/credentials/v1",
           {"@vocab": "urn:w3gate:credentials:v1#"}]  # the terms are defined in docs/credentials.md
MAX_SIZE = 16 * 1024 * 1024  # a month of one-minute batches (43,200 anchors) is ~14 MB
CLOCK_SKEW_S = 300  # how far the issuer's clock may run ahead of the verifier's
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 group order
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX_32 = re.compile(r"0x[0-9a-fA-F]{64}")
_DID = re.compile(r"did:io:0x[0-9a-f]{40}")
MS_MAX = 2 ** 48 - 1  # the registry's uint48 times


class CredentialError(W3gateError):
    """A credential cannot be issued (no records, unanchored ones, no key ...); ``reason`` says why."""

    reason = "credential"


class Invalid(W3gateError):
    """The credential is invalid; ``reason`` names the failing check (REASONS)."""

    reason = "invalid"


REASONS = {
    "bad_format": "not a compact JWT of a device-records credential (encoding, JSON, fields, types)",
    "bad_alg": "the JOSE header's alg is not ES256K (none, HS256, ... are refused)",
    "bad_key": "the header's jwk is not a secp256k1 public key",
    "wrong_issuer": "the header's key is not the key of the issuer's DID",
    "bad_signature": "the signature does not verify with the header's key",
    "expired": "the credential's exp has passed",
    "not_yet_valid": "the credential's nbf is in the future",
    "time_range": "the window, the records' receive times and the anchors' time ranges disagree",
    "count_mismatch": "the record counts do not add up",
    "chain_mismatch": "the RPC serves another chain than the credential names",
    "registry_mismatch": "the credential names another registry than the one asked",
    "no_registry": "no ProofRegistry at the registry address",
    "not_anchored": "a root is not anchored in the registry",
    "wrong_gateway": "a root was anchored by another gateway than the issuer",
    "batch_mismatch": "an anchor's sequence, count or time range differs from the chain",
    "tx_mismatch": "an anchor's transaction does not exist or did not anchor its root",
    "tx_failed": "an anchor's transaction reverted",
    "block_mismatch": "an anchor's transaction is in another block",
}


# -- time ----------------------------------------------------------------------------------------

def parse_time(text: str, *, now: float | None = None) -> int:
    """``text`` as milliseconds since the Unix epoch: epoch seconds (``1767225600``,
    ``1767225600.5``), ISO 8601 (``2026-01-01T00:00:00Z``; without an offset it is UTC) or ``now``."""
    text = text.strip()
    if text == "now":
        return math.floor((time.time() if now is None else now) * 1000)
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise CredentialError(f"{text!r} is neither epoch seconds nor an ISO 8601 time",
                                  reason="bad_time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or not 0 <= seconds * 1000 <= MS_MAX:
        raise CredentialError(f"{text!r} is outside 1970..10889", reason="bad_time")
    return math.floor(seconds * 1000 + 0.5)


def iso_ms(ms: int) -> str:
    """Milliseconds as UTC ISO 8601; past year 9999 (a hostile file's) as the number itself."""
    try:
        moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- JOSE ----------------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str, what: str, reason: str = "bad_format") -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise Invalid(f"the {what} is not base64url", reason=reason)
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Invalid(f"the {what} is not base64url", reason=reason) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose every key occurs once: two verifiers must never read two credentials."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} occurs twice")
        out[key] = value
    return out


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_INNERMOST = re.compile(r"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")
MAX_DEPTH = 32  # a credential nests 7 deep; Python's parser recurses (and may crash) far below a hostile depth


def _shallow(text: str) -> bool:
    """No more than MAX_DEPTH nested arrays and objects, found by C-speed regex passes (each
    removes the innermost ones), so a hostile nesting never reaches the recursive parser."""
    text = _JSON_STRING.sub("", text)
    for _ in range(MAX_DEPTH):
        text, removed = _INNERMOST.subn("", text)
        if not removed:
            break
    return not any(c in text for c in "[]{}")


def _json(raw: bytes, what: str) -> dict:
    try:
        text = raw.decode("utf-8")
        if not _shallow(text):
            raise ValueError(f"nested deeper than {MAX_DEPTH} or unbalanced")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Invalid(f"the {what} is not JSON: {str(e)[:200]}", reason="bad_format") from None
    if not isinstance(value, dict):
        raise Invalid(f"the {what} is not a JSON object", reason="bad_format")
    return value


def _compact_json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=False, ensure_ascii=False).encode()


def _private_key(private_key: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(private_key, "big"), ec.SECP256K1())


def public_jwk(private_key: bytes) -> dict:
    """The JWK (RFC 7517, crv secp256k1 as RFC 8812) of the key's public half."""
    numbers = _private_key(private_key).public_key().public_numbers()
    return {"kty": "EC", "crv": "secp256k1", "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big"))}


def address_of_jwk(jwk: Any) -> tuple[ec.EllipticCurvePublicKey, str]:
    """The public key a JWK holds and its Ethereum-style address (``keccak256(x‖y)[12:]``)."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") != "secp256k1":
        raise Invalid("the header's jwk is not an EC key on secp256k1", reason="bad_key")
    if "d" in jwk:
        raise Invalid("the header's jwk holds a private key", reason="bad_key")
    x, y = jwk.get("x"), jwk.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        raise Invalid("the header's jwk has no x and y", reason="bad_key")
    raw_x, raw_y = _unb64url(x, "jwk's x", "bad_key"), _unb64url(y, "jwk's y", "bad_key")
    if len(raw_x) != 32 or len(raw_y) != 32:
        raise Invalid("the header's jwk x and y are not 32 bytes each", reason="bad_key")
    try:
        key = ec.EllipticCurvePublicNumbers(int.from_bytes(raw_x, "big"), int.from_bytes(raw_y, "big"),
                                            ec.SECP256K1()).public_key()
    except ValueError:
        raise Invalid("the header's jwk is not a point on secp256k1", reason="bad_key") from None
    return key, "0x" + merkle.keccak256(raw_x + raw_y)[12:].hex()


def sign_jwt(header: dict, payload: dict, private_key: bytes) -> str:
    """A compact JWS: ES256K over ``base64url(header).base64url(payload)``, r‖s with low s."""
    signing_input = f"{b64url(_compact_json(header))}.{b64url(_compact_json(payload))}"
    der = _private_key(private_key).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    s = min(s, _N - s)  # low s, as Ethereum and most secp256k1 tools expect
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@dataclass(frozen=True)
class Decoded:
    """A compact JWT taken apart, its signature checked against the header's key."""

    header: dict
    payload: dict
    issuer_address: str  # 0x lowercase, from the header's jwk


def decode(token: str | bytes) -> Decoded:
    """Parse ``token`` and check its signature; Invalid with the reason otherwise. Only ES256K
    with a ``jwk`` is taken: ``alg`` none or anything else is refused before any key is read."""
    if isinstance(token, bytes):
        if len(token) > MAX_SIZE:
            raise Invalid(f"larger than {MAX_SIZE} bytes", reason="bad_format")
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise Invalid("a compact JWT is ASCII", reason="bad_format") from None
    if len(token) > MAX_SIZE:
        raise Invalid(f"larger than {MAX_SIZE} bytes", reason="bad_format")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise Invalid(f"a compact JWT has 3 parts separated by '.', this has {len(parts)}", reason="bad_format")
    header = _json(_unb64url(parts[0], "header"), "header")
    if header.get("alg") != ALG:
        raise Invalid(f"alg is {str(header.get('alg'))[:40]!r}: only {ALG} is accepted", reason="bad_alg")
    if "crit" in header:
        raise Invalid("the header names critical extensions (crit), which this verifier does not know",
                      reason="bad_format")
    if header.get("typ", "JWT") not in ("JWT", "vc+jwt"):
        raise Invalid(f"typ is {str(header.get('typ'))[:40]!r}, not JWT", reason="bad_format")
    key, address = address_of_jwk(header.get("jwk"))
    signature = _unb64url(parts[2], "signature")
    if len(signature) != 64:
        raise Invalid(f"an ES256K signature is 64 bytes (r‖s), this is {len(signature)}", reason="bad_signature")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        raise Invalid("the signature's r or s is out of range", reason="bad_signature")
    try:
        key.verify(encode_dss_signature(r, s), f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Invalid("the signature does not verify with the header's jwk", reason="bad_signature") from None
    payload = _json(_unb64url(parts[1], "payload"), "payload")
    return Decoded(header, payload, address)


# -- what a credential says ----------------------------------------------------------------------

@dataclass(frozen=True)
class Anchor:
    """One anchored batch covering some of the device's records (``records`` of its ``count``)."""

    root: str
    sequence: int
    count: int
    first_ms: int
    last_ms: int
    tx: str
    block: int
    records: int

    def to_dict(self) -> dict:
        return {"root": self.root, "sequence": self.sequence, "count": self.count, "firstMs": self.first_ms,
                "lastMs": self.last_ms, "tx": self.tx, "block": self.block, "records": self.records}


@dataclass(frozen=True)
class Subject:
    """The credential's subject: a device and what the node holds of it in a window."""

    device: str  # IMEI, or a legacy sensor's 16 hex digits
    kind: str  # "pebble" or "legacy"
    did: str | None  # the device's DID; None for a legacy sensor (no key of its own)
    trust: str  # "secure-element" or "gateway-attested"
    owner: str | None  # the owner's DID, when known
    owner_note: str | None  # why there is no owner
    from_ms: int
    to_ms: int
    count: int
    first_ms: int
    last_ms: int
    unanchored: int
    chain_id: int | None
    registry: str | None
    anchors: tuple[Anchor, ...]

    @property
    def anchored(self) -> int:
        return self.count - self.unanchored

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.did:
            out["id"] = self.did
        out.update({"device": self.device, "deviceKind": self.kind, "trust": self.trust})
        if self.owner:
            out["owner"] = self.owner
        else:
            out["ownerNote"] = self.owner_note or "unknown"
        out["records"] = {"fromMs": self.from_ms, "toMs": self.to_ms, "count": self.count,
                          "anchored": self.anchored, "unanchored": self.unanchored,
                          "firstReceivedMs": self.first_ms, "lastReceivedMs": self.last_ms}
        out["anchors"] = {"chainId": self.chain_id, "registry": self.registry,
                          "batches": [a.to_dict() for a in self.anchors]}
        return out


def build(subject: Subject, issuer_address: str, private_key: bytes, *, now: float | None = None,
          expires_ms: int | None = None) -> str:
    """The signed credential (compact JWT) about ``subject``, issued by ``issuer_address``
    whose key is ``private_key`` (the node key)."""
    issuer = did_of(issuer_address)
    jwk = public_jwk(private_key)
    if address_of_jwk(jwk)[1] != issuer_address.lower():
        raise CredentialError(f"the key is not the key of {issuer_address}", reason="wrong_key")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"iss": issuer}
    if subject.did:
        payload["sub"] = subject.did
    payload.update({"nbf": issued, "iat": issued, "jti": f"urn:uuid:{uuid.uuid4()}"})
    if expires_ms is not None:
        payload["exp"] = expires_ms // 1000
    payload["vc"] = {"@context": CONTEXT, "type": TYPES, "credentialSubject": subject.to_dict()}
    header = {"alg": ALG, "typ": "JWT", "kid": f"{issuer}#key-0", "jwk": jwk}
    token = sign_jwt(header, payload, private_key)
    if len(token) > MAX_SIZE:
        raise CredentialError(f"{len(subject.anchors)} anchors make a credential of {len(token)} bytes, more than "
                              f"verifiers read ({MAX_SIZE}): narrow the window", reason="too_large")
    return token


# -- reading and checking a credential -----------------------------------------------------------

def _int(value: Any, what: str, lo: int = 0, hi: int = 2 ** 63) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise Invalid(f"{what} is {str(value)[:60]!r}, not an integer in {lo}..{hi}", reason="bad_format")
    return value


def _str(value: Any, what: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or len(value) > 200 or (pattern is not None and not pattern.fullmatch(value)):
        raise Invalid(f"{what} is {str(value)[:60]!r}, not {pattern.pattern if pattern else 'a string'}",
                      reason="bad_format")
    return value


def _obj(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise Invalid(f"{what} is not an object", reason="bad_format")
    return value


def _subject(raw: Any) -> Subject:
    """The credentialSubject read strictly (types, shapes); no cross-check yet."""
    s = _obj(raw, "vc.credentialSubject")
    kind = s.get("deviceKind")
    if kind not in ("pebble", "legacy"):
        raise Invalid(f"deviceKind is {str(kind)[:40]!r}, not pebble or legacy", reason="bad_format")
    did = _str(s["id"], "credentialSubject.id", _DID) if "id" in s else None
    if kind == "pebble" and did is None:
        raise Invalid("a Pebble's credential names its DID (credentialSubject.id)", reason="bad_format")
    owner = _str(s["owner"], "credentialSubject.owner", _DID) if "owner" in s else None
    note = _str(s["ownerNote"], "credentialSubject.ownerNote") if "ownerNote" in s else None
    records = _obj(s.get("records"), "credentialSubject.records")
    anchors = _obj(s.get("anchors"), "credentialSubject.anchors")
    batches = anchors.get("batches")
    if not isinstance(batches, list):
        raise Invalid("credentialSubject.anchors.batches is not a list", reason="bad_format")
    parsed = []
    for i, b in enumerate(batches):
        b = _obj(b, f"anchors.batches[{i}]")
        parsed.append(Anchor(_str(b.get("root"), f"batches[{i}].root", _HEX_32).lower(),
                             _int(b.get("sequence"), f"batches[{i}].sequence", 0, 2 ** 64 - 1),
                             _int(b.get("count"), f"batches[{i}].count", 1, 2 ** 32 - 1),
                             _int(b.get("firstMs"), f"batches[{i}].firstMs", 0, MS_MAX),
                             _int(b.get("lastMs"), f"batches[{i}].lastMs", 0, MS_MAX),
                             _str(b.get("tx"), f"batches[{i}].tx", _HEX_32).lower(),
                             _int(b.get("block"), f"batches[{i}].block"),
                             _int(b.get("records"), f"batches[{i}].records", 1, 2 ** 32 - 1)))
    chain_id = anchors.get("chainId")
    registry = anchors.get("registry")
    if parsed or chain_id is not None or registry is not None:
        chain_id = _int(chain_id, "anchors.chainId", 1)
        registry = _str(registry, "anchors.registry", HEX_ADDRESS).lower()
    trust = s.get("trust")
    if trust != {"pebble": "secure-element", "legacy": "gateway-attested"}[kind]:
        raise Invalid(f"trust is {str(trust)[:40]!r}, not what a {kind} record carries", reason="bad_format")
    count = _int(records.get("count"), "records.count", 1)
    unanchored = _int(records.get("unanchored"), "records.unanchored")
    anchored = _int(records.get("anchored"), "records.anchored")
    if anchored + unanchored != count:
        raise Invalid(f"{anchored} anchored and {unanchored} unanchored records are not {count}",
                      reason="count_mismatch")
    return Subject(_str(s.get("device"), "credentialSubject.device"), kind, did, trust, owner, note,
                   _int(records.get("fromMs"), "records.fromMs", 0, MS_MAX),
                   _int(records.get("toMs"), "records.toMs", 0, MS_MAX), count,
                   _int(records.get("firstReceivedMs"), "records.firstReceivedMs", 0, MS_MAX),
                   _int(records.get("lastReceivedMs"), "records.lastReceivedMs", 0, MS_MAX),
                   unanchored, chain_id, registry, tuple(parsed))


@dataclass(frozen=True)
class Credential:
    """A credential whose signature, issuer binding, validity period and arithmetic hold."""

    issuer: str  # did:io:0x...
    issuer_address: str  # 0x lowercase
    subject: Subject
    issued: int  # nbf, seconds
    expires: int | None
    jti: str | None
    header: dict
    payload: dict


def check_offline(token: str | bytes, *, now: float | None = None) -> Credential:
    """Everything that needs no chain: signature, key ↔ issuer DID, structure, validity period,
    and that counts and time ranges agree with each other. Invalid with the reason otherwise."""
    now = time.time() if now is None else now
    d = decode(token)
    p = d.payload
    issuer = _str(p.get("iss"), "iss", _DID)
    if issuer != did_of(d.issuer_address):
        raise Invalid(f"the header's key is the key of {did_of(d.issuer_address)}, not of the issuer {issuer}",
                      reason="wrong_issuer")
    kid = d.header.get("kid")
    if kid is not None and (not isinstance(kid, str) or kid.split("#")[0] != issuer):
        raise Invalid(f"kid {str(kid)[:80]!r} is not a key of {issuer}", reason="wrong_issuer")
    nbf = _int(p.get("nbf"), "nbf", 0, MS_MAX)
    iat = _int(p["iat"], "iat", 0, MS_MAX) if "iat" in p else nbf
    exp = _int(p["exp"], "exp", 0, MS_MAX) if "exp" in p else None
    jti = _str(p["jti"], "jti") if "jti" in p else None
    vc = _obj(p.get("vc"), "vc")
    types = vc.get("type")
    if not isinstance(types, list) or "VerifiableCredential" not in types or "DeviceRecordsCredential" not in types:
        raise Invalid("vc.type is not [VerifiableCredential, DeviceRecordsCredential]", reason="bad_format")
    context = vc.get("@context")
    if not isinstance(context, list) or not context or context[0] != CONTEXT[0]:
        raise Invalid(f"vc.@context does not start with {CONTEXT[0]}", reason="bad_format")
    if "issuer" in vc and vc["issuer"] != issuer and vc["issuer"] != {"id": issuer}:
        raise Invalid("vc.issuer is not iss", reason="wrong_issuer")
    subject = _subject(vc.get("credentialSubject"))
    if subject.did != p.get("sub"):
        raise Invalid(f"sub {str(p.get('sub'))[:60]!r} is not credentialSubject.id {subject.did!r}",
                      reason="bad_format")
    if nbf > now + CLOCK_SKEW_S or iat > now + CLOCK_SKEW_S:
        raise Invalid(f"issued at {iso_ms(nbf * 1000)}, in the future", reason="not_yet_valid")
    if exp is not None and exp <= now:
        raise Invalid(f"expired at {iso_ms(exp * 1000)}", reason="expired")
    _check_sums(subject, nbf)
    return Credential(issuer, d.issuer_address, subject, nbf, exp, jti, d.header, p)


def _check_sums(s: Subject, issued: int) -> None:
    """Counts add up; receive times lie in the window, the anchors' ranges meet it, and the
    window ended before the credential was made (a count of a window still open is not final)."""
    if s.from_ms > s.to_ms:
        raise Invalid(f"the window starts at {s.from_ms} ms, after it ends ({s.to_ms} ms)", reason="time_range")
    if s.to_ms > issued * 1000 + CLOCK_SKEW_S * 1000:
        raise Invalid(f"the window ends at {iso_ms(s.to_ms)}, after the credential was issued "
                      f"({iso_ms(issued * 1000)})", reason="time_range")
    if not s.from_ms <= s.first_ms <= s.last_ms <= s.to_ms:
        raise Invalid(f"records received {s.first_ms}..{s.last_ms} ms do not lie in the window "
                      f"{s.from_ms}..{s.to_ms} ms", reason="time_range")
    if s.unanchored > s.count:
        raise Invalid(f"{s.unanchored} unanchored of {s.count} records", reason="count_mismatch")
    in_batches = sum(a.records for a in s.anchors)
    if in_batches != s.anchored:
        raise Invalid(f"the batches hold {in_batches} of the device's records, the credential says "
                      f"{s.anchored} are anchored", reason="count_mismatch")
    if s.count == 1 and s.first_ms != s.last_ms:
        raise Invalid("one record received at two times", reason="time_range")
    seen_roots, seen_seqs = set(), set()
    for a in s.anchors:
        if a.root in seen_roots or a.sequence in seen_seqs:
            raise Invalid(f"batch {a.sequence} ({a.root}) is listed twice", reason="count_mismatch")
        seen_roots.add(a.root)
        seen_seqs.add(a.sequence)
        if a.records > a.count:
            raise Invalid(f"batch {a.sequence} holds {a.count} records, not {a.records} of this device",
                          reason="count_mismatch")
        if a.first_ms > a.last_ms or a.last_ms < s.from_ms or a.first_ms > s.to_ms:
            raise Invalid(f"batch {a.sequence}'s records were received {a.first_ms}..{a.last_ms} ms, outside the "
                          f"window {s.from_ms}..{s.to_ms} ms", reason="time_range")
    if s.anchors and s.unanchored == 0:
        low, high = min(a.first_ms for a in s.anchors), max(a.last_ms for a in s.anchors)
        if s.first_ms < low or s.last_ms > high:
            raise Invalid(f"records received {s.first_ms}..{s.last_ms} ms, but the batches cover only "
                          f"{low}..{high} ms", reason="time_range")


# -- against the chain ---------------------------------------------------------------------------

@dataclass
class Verdict:
    """``ok`` and "valid", or not ok with the failing check's reason; ``checked`` lists what
    was proven, ``notes`` what a reader must know even when it is valid."""

    ok: bool
    reason: str
    detail: str
    credential: Credential | None = None
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"valid": self.ok, "reason": self.reason, "detail": self.detail,
                               "checked": self.checked, "notes": self.notes}
        if self.credential is not None:
            out["issuer"] = self.credential.issuer
            out["credentialSubject"] = self.credential.payload["vc"]["credentialSubject"]
        return out


def _hexint(value: Any) -> int:
    if not isinstance(value, str):
        raise CannotTell(f"the chain answered {str(value)[:60]!r} where a hex number belongs", reason="rpc_error")
    try:
        return int(value, 16)
    except ValueError:
        raise CannotTell(f"the chain answered {value[:60]!r} where a hex number belongs", reason="rpc_error") from None


def check_chain(c: Credential, rpc_url: str, registry: str | None = None, *, timeout: float = 10.0) -> list[str]:
    """Each anchor against the chain: ``anchorOf(root)`` names the issuer with the stated
    sequence, count and time range, and its transaction succeeded in the stated block, emitting
    that ``Anchored`` event from the registry. Returns what was checked; Invalid or CannotTell."""
    s = c.subject
    if registry is not None and s.registry is not None and registry.lower() != s.registry:
        raise Invalid(f"the credential's anchors are in registry {s.registry}, not {registry}",
                      reason="registry_mismatch")
    if not s.anchors:
        return []

    def call(method: str, *params: Any) -> Any:
        try:
            return rpc(rpc_url, method, *params, timeout=timeout)
        except _RpcError as e:
            raise CannotTell(f"{rpc_url}: {e}", reason="rpc_error") from None

    chain_id = _hexint(call("eth_chainId"))
    if chain_id != s.chain_id:
        raise Invalid(f"the credential's anchors are on chain {s.chain_id}, the RPC serves chain {chain_id}",
                      reason="chain_mismatch")
    head = _hexint(call("eth_blockNumber"))
    code = call("eth_getCode", s.registry, "latest")
    if not isinstance(code, str) or code in ("0x", ""):
        raise Invalid(f"there is no contract at {s.registry} on chain {chain_id}", reason="no_registry")
    gateway_topic = "0x" + "00" * 12 + c.issuer_address.removeprefix("0x")
    for a in s.anchors:
        out = call("eth_call", {"to": s.registry, "data": "0x" + (ANCHOR_OF + bytes.fromhex(a.root[2:])).hex()},
                   "latest")
        raw = bytes.fromhex(out[2:]) if isinstance(out, str) and re.fullmatch(r"0x(?:[0-9a-fA-F]{2})*", out) else b""
        if len(raw) != 192:
            raise Invalid(f"anchorOf at {s.registry} answers {len(raw)} bytes, not 192: not a ProofRegistry",
                          reason="no_registry")
        words = [int.from_bytes(raw[i:i + 32], "big") for i in range(0, 192, 32)]
        gateway = "0x" + words[0].to_bytes(32, "big")[12:].hex()
        if words[0] == 0:
            raise Invalid(f"root {a.root} (batch {a.sequence}) is not anchored in {s.registry}", reason="not_anchored")
        if gateway != c.issuer_address:
            raise Invalid(f"root {a.root} was anchored by {gateway}, not the issuer {c.issuer_address}",
                          reason="wrong_gateway")
        stated = (a.sequence, a.count, a.first_ms, a.last_ms)
        if tuple(words[1:5]) != stated:
            raise Invalid(f"batch {a.sequence}: the chain holds sequence, count, first and last ms "
                          f"{tuple(words[1:5])}, the credential {stated}", reason="batch_mismatch")
        receipt = call("eth_getTransactionReceipt", a.tx)
        if receipt is None:
            raise Invalid(f"batch {a.sequence}: the chain knows no transaction {a.tx}", reason="tx_mismatch")
        if not isinstance(receipt, dict):
            raise CannotTell(f"{rpc_url}: a receipt that is not an object", reason="rpc_error")
        if _hexint(receipt.get("status")) != 1:
            raise Invalid(f"batch {a.sequence}: transaction {a.tx} reverted", reason="tx_failed")
        block = _hexint(receipt.get("blockNumber"))
        if block != a.block:
            raise Invalid(f"batch {a.sequence}: transaction {a.tx} is in block {block}, not {a.block}",
                          reason="block_mismatch")
        logs = receipt.get("logs")
        if not isinstance(logs, list):
            raise CannotTell(f"{rpc_url}: a receipt without a list of logs", reason="rpc_error")
        if not any(_is_anchored_log(entry, s.registry, gateway_topic, a) for entry in logs):
            raise Invalid(f"batch {a.sequence}: transaction {a.tx} did not anchor root {a.root}", reason="tx_mismatch")
    return [f"chain {chain_id}: registry {s.registry} holds all {len(s.anchors)} roots, anchored by "
            f"the issuer {c.issuer_address} with the stated sequences, counts and time ranges",
            f"every anchoring transaction exists, succeeded in the stated block and emitted its Anchored "
            f"event (the newest {head - max(a.block for a in s.anchors) + 1} blocks deep)"]


def _is_anchored_log(entry: Any, registry: str, gateway_topic: str, a: Anchor) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
        return False
    topics = entry.get("topics")
    topics = [t.lower() for t in topics if isinstance(t, str)] if isinstance(topics, list) else []
    data = entry.get("data")
    if entry["address"].lower() != registry or topics != [ANCHORED_TOPIC, gateway_topic, a.root] \
            or not isinstance(data, str) or len(data) != 2 + 4 * 64:
        return False
    try:
        words = tuple(int(data[2 + i:2 + i + 64], 16) for i in range(0, 256, 64))
    except ValueError:
        return False
    return words == (a.sequence, a.count, a.first_ms, a.last_ms)


def verify(token: str | bytes, rpc_url: str | None, registry: str | None = None, *,
           now: float | None = None, timeout: float = 10.0) -> Verdict:
    """Check a credential offline and, with ``rpc_url``, against the chain. Raises CannotTell
    when the chain cannot be asked; every other outcome is a Verdict."""
    try:
        c = check_offline(token, now=now)
    except Invalid as e:
        return Verdict(False, e.reason, e.detail)
    s = c.subject
    checked = [f"signed with ES256K by the key in the header, whose address is the issuer's DID {c.issuer}",
               "well formed; the record counts and the receive times, the window and the batches' time ranges agree",
               "not expired" if c.expires else "no expiry (the facts it states do not age)"]
    notes = []
    if s.unanchored:
        notes.append(f"{s.unanchored} of the {s.count} records were not anchored when it was issued: "
                     "only the issuer's word covers them")
    notes.append("the record count per batch is the issuer's word: the chain holds each batch's total; "
                 "prove any one record with `w3gate proof`")
    if rpc_url is None:
        notes.append("offline: the anchors were not checked against the chain")
    else:
        if registry is None and s.registry is not None:
            notes.append(f"the registry {s.registry} was taken from the credential: give --registry "
                         "to check against the one you trust")
        try:
            checked += check_chain(c, rpc_url, registry, timeout=timeout)
        except Invalid as e:
            return Verdict(False, e.reason, e.detail, c)
    device = s.did or f"legacy sensor {s.device}"
    return Verdict(True, "valid", f"{s.count} records of {device}, received {iso_ms(s.first_ms)} .. "
                                  f"{iso_ms(s.last_ms)}, in {len(s.anchors)} anchored batches, issued by {c.issuer}",
                   c, checked, notes)
