"""``w3gate pebble decode|verify``: debug a captured Pebble payload (hex, base64 or a file)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import sys
import tempfile
from pathlib import Path

import click

from gateway.cli.common import (
    config_option,
    data_dir_option,
    emit_json,
    get_config,
    json_option,
)
from gateway.codec import pebble as codec
from gateway.codec.record import Record
from gateway.errors import CodecError, Rejection, W3gateError
from gateway.layout import DataDir
from gateway.verify.registry import Registry, make_device
from gateway.verify.secp256k1 import is_low_s, recover
from gateway.verify.verifier import Policy, Verifier


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except OSError:  # e.g. a hex payload longer than a file name may be
        return False


def read_payload(source: str) -> bytes:
    """A payload given as hex, base64, JSON text, a file holding any of those, raw bytes, or '-'."""
    if source == "-":
        raw = sys.stdin.buffer.read()
    elif len(source) < 4096 and _is_file(source):
        raw = Path(source).read_bytes()
    else:
        raw = source.encode()
    text = raw.strip()
    if text.startswith(b"{"):
        return text
    try:
        compact = b"".join(text.split()).decode("ascii")
    except UnicodeDecodeError:
        return raw  # binary capture
    for decode in (lambda s: bytes.fromhex(s.removeprefix("0x")), lambda s: base64.b64decode(s, validate=True),
                   lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))):
        try:
            return decode(compact)
        except (ValueError, binascii.Error):
            continue
    return raw


RECORD_KINDS = {codec.PackageType.DATA: "data", codec.PackageType.CONFIG: "config"}


def describe(payload: bytes, kind: str) -> dict:
    """Decode without judging, as a stored record would be read (gateway/codec/record.py): what
    the bytes say, and which addresses could have signed them."""
    if kind == "auto":
        kind = "json" if payload[:1] == b"{" else "binpackage"
    if kind == "json":
        record, fmt = Record.capture(payload, "json", "data"), "G1 JSON"
    elif kind == "binpackage":
        try:
            package_type = codec.decode_binpackage(payload).type
        except CodecError:
            return describe(payload, "confirm")
        name = codec.PackageType(package_type).name if package_type in list(codec.PackageType) else str(package_type)
        record, fmt = Record.capture(payload, "protobuf", RECORD_KINDS.get(package_type, name)), f"BinPackage {name}"
    else:
        record, fmt = Record.capture(payload, "protobuf", "confirm"), "ConfirmPackage"
    message = record.message
    if record.kind in record.wire.events:  # the values of a kind the gateway stores; a decoding error stops here
        reading = record.wire.values(message, record.kind, None)
    else:
        reading = {"raw": message.data.hex()}
    out = {"format": fmt, "timestamp": message.timestamp, "reading": reading}
    digest, signature = hashlib.sha256(message.preimage).digest(), record.signature
    out["sha256"] = digest.hex()
    out["signature"] = {"hex": signature.hex(), "low_s": is_low_s(signature)}
    out["signer_candidates"] = {f"v={v}": key.address for v, key in recover(digest, signature)}
    return out


@click.group()
def pebble() -> None:
    """Decode and verify captured Pebble payloads."""


@pebble.command()
@click.argument("payload")
@click.option("--kind", type=click.Choice(["auto", "binpackage", "confirm", "json"]), default="auto")
@json_option
def decode(payload, kind, as_json) -> None:
    """Decode PAYLOAD (hex, base64, JSON, a file, or - for stdin) and print its reading."""
    try:
        info = describe(read_payload(payload), kind)
    except (CodecError, ValueError) as e:
        raise click.ClickException(f"cannot decode: {e}") from None
    if as_json:
        return emit_json(info)
    click.echo(f"{info['format']}  timestamp {info['timestamp']}")
    for key, value in info["reading"].items():
        click.echo(f"  {key:<22} {value}")
    click.echo(f"  sha256                 {info['sha256']}")
    click.echo(f"  signature              {'low' if info['signature']['low_s'] else 'high'}-S")
    for v, address in info["signer_candidates"].items():
        click.echo(f"  signer if {v:<12} {address}")


@pebble.command()
@click.argument("payload")
@click.option("--imei", help="Device IMEI (looked up in the registry unless --address/--public-key).")
@click.option("--address", help="Expected signer address.")
@click.option("--public-key", help="Expected signer public key (04...).")
@click.option("--confirm", "is_confirm", is_flag=True, help="PAYLOAD is a ConfirmPackage.")
@click.option("--owner", help="With --confirm: the proposer the device must name.")
@click.option("--at", "at_time", type=float,
              help="Check freshness as of this unix time (default: the payload's own time, i.e. skip).")
@json_option
@config_option
@data_dir_option
def verify(payload, imei, address, public_key, is_confirm, owner, at_time, as_json, config_path, data_dir) -> None:
    """Verify PAYLOAD's signature; print 'valid' (exit 0) or the rejection reason (exit 1)."""
    raw = read_payload(payload)
    with tempfile.TemporaryDirectory() as tmp:
        if address or public_key:
            registry = Registry(DataDir(Path(tmp)).devices)  # a throwaway data directory
            imei = imei or "000000000000000"
            try:
                registry.add(make_device(imei, address=address, public_key=public_key, owner=owner,
                                         profile="g1" if raw[:1] == b"{" else codec.DEFAULT_PROFILE))
            except W3gateError as e:
                raise click.ClickException(str(e)) from None
        elif imei:
            registry = Registry(get_config(config_path, data_dir).layout.devices)
        else:
            raise click.UsageError("give --address, --public-key or --imei (a registered device)")
        clock_value = at_time
        if clock_value is None:
            try:
                clock_value = describe(raw, "confirm" if is_confirm else "auto")["timestamp"]
            except (CodecError, ValueError):
                clock_value = 0.0
        verifier = Verifier(registry, Policy(max_payload=1 << 20), clock=lambda: clock_value)
        try:
            accepted = (verifier.confirm if is_confirm else verifier.data)(imei, raw)
        except Rejection as r:
            result = {"valid": False, "reason": r.reason, "detail": r.detail}
        else:
            result = {"valid": True, "device": accepted.device.imei, "signer": accepted.device.address,
                      "kind": accepted.kind, "sha256": accepted.digest.hex()}
    if as_json:
        emit_json(result)
    elif result["valid"]:
        click.echo(f"valid: {result['kind']} signed by {result['signer']}")
    else:
        click.echo(f"invalid: {result['reason']}: {result['detail']}")
    sys.exit(0 if result["valid"] else 1)


COMMANDS = [pebble]
