"""``w3gate device``: the registry of devices allowed to send data, and their downlinks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gateway.broker.access import CLI_USER, link_credentials
from gateway.cli.broker import device_bundle, forget_device, sync_broker
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option
from gateway.codec import downlink
from gateway.codec.pebble import PROFILES, DEFAULT_PROFILE
from gateway.errors import W3gateError
from gateway.verify.registry import Registry, make_device


def _registry(config_path, data_dir) -> Registry:
    return Registry(get_config(config_path, data_dir).layout.devices)


@click.group()
def device() -> None:
    """Register, list and remove devices; send them configuration."""


@device.command("add")
@click.argument("imei")
@click.option("--address", help="The device's Ethereum-style address (0x...), checked by key recovery.")
@click.option("--public-key", help="The device's uncompressed secp256k1 public key (04...).")
@click.option("--owner", help="Owner (proposer) address; the device confirms it with a signed message.")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default=DEFAULT_PROFILE, show_default=True,
              help="Firmware profile (wire format, temperature encoding).")
@click.option("--replace", is_flag=True, help="Replace an existing entry for this IMEI.")
@config_option
@data_dir_option
def add(imei, address, public_key, owner, profile, replace, config_path, data_dir) -> None:
    """Register a device by IMEI with its address or public key."""
    config = get_config(config_path, data_dir)
    try:
        dev = make_device(imei, address=address, public_key=public_key, owner=owner, profile=profile)
        Registry(config.layout.devices).add(dev, replace_existing=replace)
        bundle = device_bundle(config, dev.imei, g1=PROFILES[dev.profile].wire == "json")
        sync_broker(config)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"added {dev.imei} {dev.address} profile={dev.profile} status={dev.status}")
    if bundle is not None:
        click.echo(f"broker identity {bundle.dir.name}: {bundle.dir}/ holds {bundle.ca.name}, {bundle.cert.name} "
                   f"and {bundle.key.name} to provision (docs/broker.md)")


@device.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace entries that already exist.")
@config_option
@data_dir_option
def import_(path, replace, config_path, data_dir) -> None:
    """Register every device in a JSON list of {imei, address|public_key, owner, profile}
    (the devices.json an emulated fleet writes)."""
    try:
        entries = json.loads(Path(path).read_text())
        devices = [make_device(e["imei"], address=e.get("address"), public_key=e.get("public_key"),
                               owner=e.get("owner"), profile=e.get("profile", DEFAULT_PROFILE))
                   for e in entries]
        config = get_config(config_path, data_dir)
        added = Registry(config.layout.devices).add_many(devices, replace_existing=replace)
        for dev in devices:  # each Pebble's broker identity, unless it has one
            if not any(config.layout.broker.client(n).cert.exists() for n in (dev.imei, f"nrf-{dev.imei}")):
                device_bundle(config, dev.imei, g1=PROFILES[dev.profile].wire == "json")
        sync_broker(config)
    except (ValueError, KeyError, TypeError) as e:
        raise click.ClickException(f"{path}: not a device list ({e})") from None
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"imported {added} of {len(devices)} devices")


@device.command("list")
@json_option
@config_option
@data_dir_option
def list_(as_json, config_path, data_dir) -> None:
    """List registered devices."""
    devices = list(_registry(config_path, data_dir))
    if as_json:
        return emit_json([d.to_dict() for d in devices])
    if not devices:
        click.echo("no devices registered (w3gate device add IMEI --address 0x...)")
    for d in devices:
        click.echo(f"{d.imei}  {d.address}  {d.profile:<17} {d.status:<9} owner={d.owner or '-'}")


@device.command("remove")
@click.argument("imei")
@config_option
@data_dir_option
def remove(imei, config_path, data_dir) -> None:
    """Remove a device; its data is refused from then on."""
    config = get_config(config_path, data_dir)
    if not Registry(config.layout.devices).remove(imei):
        raise click.ClickException(f"device {imei} is not registered")
    forget_device(config, imei)
    sync_broker(config)  # its access rules go, for an open connection too
    click.echo(f"removed {imei}")


def _publish(config_path, data_dir, imei: str, topic: str, payload: bytes) -> None:
    import paho.mqtt.publish as publish

    config = get_config(config_path, data_dir)
    if _registry(config_path, data_dir).get(imei) is None:
        raise click.ClickException(f"device {imei} is not registered")
    login = link_credentials(config.mqtt.username, config.mqtt.password, config.layout.broker, user=CLI_USER)
    auth = {"username": login[0], "password": login[1]} if login else None
    try:
        publish.single(topic, payload, qos=1, retain=True, hostname=config.mqtt.host,
                       port=config.mqtt.port, auth=auth, client_id=f"w3gate-cli-{imei}")
    except OSError as e:
        raise click.ClickException(f"broker {config.mqtt.host}:{config.mqtt.port}: {e}") from None
    click.echo(f"sent {len(payload)} bytes to {topic} (retained until the device picks it up)")


@device.command("config")
@click.argument("imei")
@click.option("--period", type=int, help="Upload period in seconds (10..86400).")
@click.option("--channels", type=int, help="Data channel mask (0..8183; 8183 = all).")
@click.option("--precise-gps/--rounded-gps", default=None, help="Disable the 0.01 degree GPS rounding.")
@config_option
@data_dir_option
def config_(imei, period, channels, precise_gps, config_path, data_dir) -> None:
    """Send a configuration downlink (backend/<IMEI>/config)."""
    try:
        payload = downlink.config(upload_period=period, data_channel=channels, precise_gps=precise_gps)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    _publish(config_path, data_dir, imei, downlink.CONFIG_TOPIC.format(imei), payload)


@device.command("firmware")
@click.argument("imei")
@click.option("--version", "version", required=True, help="Firmware version, e.g. 1.0.15.")
@click.option("--uri", required=True, help="HTTPS URL of the image.")
@click.option("--app", default="Riverrock", show_default=True)
@config_option
@data_dir_option
def firmware(imei, version, uri, app, config_path, data_dir) -> None:
    """Send a firmware-update downlink (backend/<IMEI>/firmware)."""
    try:
        payload = downlink.firmware(app, version, uri)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    _publish(config_path, data_dir, imei, downlink.FIRMWARE_TOPIC.format(imei), payload)


COMMANDS = [device]


# -- legacy sensors (serial, BLE) ---------------------------------------------------------------

def _legacy_registry(config_path, data_dir):
    from gateway.legacy.registry import LegacyRegistry

    return LegacyRegistry(get_config(config_path, data_dir).layout.legacy_devices)


def _settings(period_ms, sensors) -> dict:
    settings = {}
    if period_ms is not None:
        settings["period_ms"] = period_ms
    if sensors:
        settings["sensors"] = [s.strip() for s in sensors.split(",") if s.strip()]
    return settings


@device.command("pair")
@click.option("--serial", "port", metavar="PORT",
              help="Flash the board on this serial port (at its MicroPython REPL, /dev/serial/by-id/...).")
@click.option("--ble", "ble_name", metavar="NAME",
              help="A BLE sensor named NAME. Alone: give the board advertising NAME its identity over the air "
                   "(firmware already on it). With --serial: flash it over USB, and the gateway reaches it over BLE.")
@click.option("--name", help="A name for the sensor (with --ble, its advertised name).")
@click.option("--period-ms", type=int, default=1000, show_default=True, help="Reading period.")
@click.option("--sensors", default="sim", show_default=True,
              help="Comma-separated sensors to read: bme280, dht22, sim (simulated).")
@click.option("--link", default="stdio", show_default=True,
              help="With --serial, where the firmware sends frames: stdio (the USB port it was flashed "
                   "on) or uart:<n>:<baud>:<tx>:<rx>.")
@click.option("--replace", is_flag=True, help="Pair again a sensor already paired under this name.")
@click.option("--timeout", type=float, default=15.0, show_default=True,
              help="Seconds to wait for the first signed frame.")
@json_option
@config_option
@data_dir_option
def pair(port, ble_name, name, period_ms, sensors, link, replace, timeout, as_json, config_path, data_dir) -> None:
    """Pair a legacy sensor: a new device key and its settings onto the board (firmware with
    mpremote over serial, or over BLE), register it, and check its first signed frame. The key
    is never printed."""
    import asyncio

    from rich.progress import BarColumn, Progress, TextColumn

    from gateway.legacy.pairing import pair_ble, pair_serial

    if not port and not ble_name:
        raise click.UsageError("give --serial PORT, --ble NAME, or both (flash over USB, then use BLE)")
    name = name or ble_name
    if not name:
        raise click.UsageError("--name is needed with --serial")
    config = get_config(config_path, data_dir)
    settings = _settings(period_ms, sensors)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  transient=True, disable=as_json or not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"pairing {name}", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=f"{step} → {name}", completed=done, total=total)
        try:
            if port:  # with --ble too: the board also serves BLE, and the gateway reaches it there
                paired = pair_serial(config, port, name=name, settings=settings, link=link, replace=replace,
                                     ble=bool(ble_name), check_timeout_s=timeout, progress=progress)
            else:
                from gateway.ingest.ble import bleak_backends

                scanner, client = bleak_backends(config.ble.transport)
                paired = asyncio.run(pair_ble(config, name, settings=settings, replace=replace,
                                              check_timeout_s=timeout, scanner_backend=scanner,
                                              client_backend=client, progress=progress))
        except W3gateError as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        return emit_json({**paired.device.public_dict(), "first_frame": paired.first_frame,
                          "first_payload": paired.first_payload, "seconds": round(paired.seconds, 2)})
    where = port or f"BLE {paired.device.address}"
    click.echo(f"paired {name} ({paired.device.device_id}) on {where} in {paired.seconds:.1f} s")
    click.echo(f"first signed frame: {paired.first_frame} {json.dumps(paired.first_payload)}")


@device.command("sensors")
@json_option
@config_option
@data_dir_option
def sensors_(as_json, config_path, data_dir) -> None:
    """List paired legacy sensors (serial, BLE); keys are never shown."""
    devices = list(_legacy_registry(config_path, data_dir))
    if as_json:
        return emit_json([d.public_dict() for d in devices])
    if not devices:
        click.echo("no sensors paired (w3gate device pair --serial PORT --name NAME)")
    for d in devices:
        click.echo(f"{d.device_id}  {d.name:<16} {d.transport:<6} {d.address or '-':<30} {json.dumps(d.config)}"
                   + _last_command(d))


def _last_command(d) -> str:
    """The newest command an applet sent the sensor, and what the sensor answered."""
    if not d.command:
        return ""
    ack = d.command_ack if d.command_ack.get("seq") == d.command["seq"] else {}
    answer = {k: v for k, v in (ack.get("result") or {}).items() if k != "command_seq"}
    return (f"  command {d.command['seq']} {json.dumps(d.command['command'])}: "
            + (json.dumps(answer) if ack else "not acknowledged yet"))


@device.command("set")
@click.argument("name")
@click.option("--period-ms", type=int, help="Reading period.")
@click.option("--sensors", help="Comma-separated sensors to read: bme280, dht22, sim.")
@config_option
@data_dir_option
def set_(name, period_ms, sensors, config_path, data_dir) -> None:
    """Change a paired sensor's settings; the gateway sends them down its link."""
    from gateway.legacy.registry import check_config

    registry = _legacy_registry(config_path, data_dir)
    found = registry.find(name)
    if found is None:
        raise click.ClickException(f"no sensor named {name!r} is paired (w3gate device sensors)")
    try:
        settings = check_config({**found.config, **_settings(period_ms, sensors)})
        registry.update(found.device_id, config=settings)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{name}: {json.dumps(settings)} (a running gateway sends them down its link)")


@device.command("unpair")
@click.argument("name")
@config_option
@data_dir_option
def unpair(name, config_path, data_dir) -> None:
    """Forget a paired sensor: its frames are refused from then on."""
    registry = _legacy_registry(config_path, data_dir)
    found = registry.find(name)
    if found is None or not registry.remove(found.device_id):
        raise click.ClickException(f"no sensor named {name!r} is paired")
    click.echo(f"unpaired {name} ({found.device_id})")
