"""``w3gate records``: the buffered records, newest first, with their state."""
from __future__ import annotations

import click

from gateway.buffer.records import decode_record, iso
from gateway.buffer.store import RecordStore
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option
from gateway.errors import W3gateError
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
@click.option("--limit", type=int, default=20, show_default=True, help="How many records (0 = all).")
@json_option
@config_option
@data_dir_option
def records(imei, limit, as_json, config_path, data_dir) -> None:
    """List buffered records, newest first, with their state and decoded values."""
    config = get_config(config_path, data_dir)
    if not config.records_path.exists():
        raise click.ClickException(f"no records in {config.data_dir} yet")
    registry = Registry(config.registry_path)
    try:
        store = RecordStore(config.records_path, readonly=True)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    rows = []
    for doc in store.iter_records(device=imei, limit=limit or None):
        device = registry.get(doc["device"])
        rows.append({**doc, "values": decode_record(doc, device.profile if device else None)})
    store.close()
    if as_json:
        return emit_json(rows)
    if not rows:
        click.echo("no records" + (f" for device {imei}" if imei else ""))
    for r in rows:
        click.echo(f"{r['seq']:>8} {r['state']:<9} {iso(r['rx'])} {r['device']} {r['kind']:<7} "
                   f"{r.get('trust', ''):<16} {summary(r['kind'], r['values'])}")


COMMANDS = [records]
