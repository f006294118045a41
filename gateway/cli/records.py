"""``w3gate records``: the buffered records, newest first, with their state.

``--json`` also gives, for every record of every wire, the four fields its proof leaf commits to
(docs/proofs.md, "What `w3gate records --json` exports"): a third party rebuilds leaves and batch
roots from this listing alone, without decoding payloads the way w3gate does."""
from __future__ import annotations

import click

from gateway.buffer.store import RecordStore
from gateway.chain.datakey import cipher_from_config
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, iso, json_option
from gateway.codec.record import Record
from gateway.errors import CodecError, W3gateError
from gateway.proofs import merkle
from gateway.proofs.leaf import leaf_fields
from gateway.verify.registry import Registry


def summary(kind: str, values: dict) -> str:
    if "error" in values:
        return values["error"]
    if kind == "confirm":
        return f"owner {values['owner']}"
    if kind == "hello":
        heap = f" heap free {values['heap_free']} B" if values.get("heap_free") else ""
        return f"firmware {values.get('fw')!r} sensors {','.join(values.get('sensors') or [])}{heap}"
    if kind == "config_ack":
        return "settings " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "config_seq")
    if kind == "command_ack":
        return f"command {values.get('command_seq')}: " + ", ".join(
            f"{k}={v}" for k, v in values.items() if k != "command_seq")
    if kind == "config":
        return f"firmware {values['firmware']!r} period {values['upload_period']} s channels {values['data_channel']}"
    parts = []
    if "temperature" in values:
        parts.append(f"{values['temperature']:.2f} °C")
    if "humidity" in values:
        parts.append(f"{values['humidity']:.1f} %RH")
    if "pressure" in values:
        parts.append(f"{values['pressure']:.1f} hPa")
    if "gps_fix" in values:
        parts.append(f"{values['latitude']:.4f},{values['longitude']:.4f}" if values["gps_fix"] else "no fix")
    if "vbat" in values:
        parts.append(f"{values['vbat']:.2f} V")
    return "  ".join(parts)


@click.command()
@click.option("--device", "imei", help="Only this IMEI (or legacy sensor id).")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many records (0 = all).")
@json_option
@config_option
@data_dir_option
def records(imei, limit, as_json, config_path, data_dir) -> None:
    """List buffered records, newest first, with their state and decoded values."""
    config = get_config(config_path, data_dir)
    if not config.layout.records.is_dir():
        raise click.ClickException(f"no records in {config.data_dir} yet")
    try:
        rows, damage = _read(config, imei, limit)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot read {config.layout.records}: {e.strerror or e}") from None
    for d in damage:  # on stderr: the listing stays clean for scripts
        click.echo(f"warning: damaged buffer file {d.line()} (see `w3gate buffer check`)", err=True)
    if as_json:
        return emit_json(rows)
    if not rows:
        click.echo("no records" + (f" for device {imei}" if imei else ""))
    for r in rows:
        click.echo(_line(r))


def _line(r: dict) -> str:
    try:
        what = summary(r.get("kind", "?"), r["values"])
    except (KeyError, TypeError, ValueError) as e:  # values of a record edited by hand
        what = f"cannot show: {type(e).__name__}: {e}"
    return (f"{r['seq']:>8} {r['state']:<9} {iso(r['rx'])} {r.get('device', '?')} {r.get('kind', '?'):<7} "
            f"{r.get('trust', ''):<16} {what}")


def _read(config, imei: str | None, limit: int) -> tuple[list[dict], list]:
    """The rows to show and the damage the read-only view met (it recovers in memory, changes nothing)."""
    registry = Registry(config.layout.devices)
    store = RecordStore(config.layout.records, readonly=True, cipher=cipher_from_config(config))
    try:
        rows = []
        for doc in store.iter_records(device=imei, limit=limit or None):
            device = registry.get(doc["device"])
            profile = device.profile if device else None
            try:
                if "payload_error" in doc:  # encrypted at rest, and it does not open (the store says why)
                    values = {"error": f"unreadable payload: {doc['payload_error']}"}
                else:
                    values = Record(doc).values(profile)
            except (KeyError, TypeError, ValueError) as e:  # a record edited by hand
                values = {"error": f"cannot decode: {type(e).__name__}: {e}"}
            rows.append({**doc, "wire": doc.get("wire", "protobuf"), "values": values,
                         **_leaf(doc, device.address if device else None)})
        return rows, store.damage
    finally:
        store.close()


def _leaf(doc: dict, registered: str | None) -> dict:
    """What the record's proof leaf hashes, in the leaf's own encodings (the signature as r||s
    with G1's nibbles restored, the legacy attestation cut to 64 bytes), and the leaf itself, so
    that a verifier needs no w3gate codec; ``leaf_error`` instead when it cannot be derived."""
    if "payload_error" in doc:
        return {"leaf_error": f"unreadable payload: {doc['payload_error']}"}
    address = doc.get("address") or registered  # the oldest records name no address
    if not address:
        return {"leaf_error": f"device {doc.get('device')} is not in the registry: its address is unknown"}
    try:
        fields = leaf_fields(doc, address)
        leaf = merkle.leaf(fields["address"], bytes.fromhex(fields["signature"]),
                           bytes.fromhex(fields["payload_sha256"]), fields["received_ms"])
    except (CodecError, KeyError, TypeError, ValueError) as e:  # a record edited by hand
        return {"leaf_error": f"{type(e).__name__}: {e}"}
    return {**fields, "leaf": "0x" + leaf.hex()}


COMMANDS = [records]
