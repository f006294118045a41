"""``w3gate sim``: emulated devices against a gateway, over real transports (MQTT)."""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import click

from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option
from gateway.codec.pebble import DEFAULT_PROFILE, PROFILES
from gateway.errors import W3gateError


@click.group()
def sim() -> None:
    """Run emulated devices against a gateway, over real transports."""


def parse_broker(text: str) -> tuple[str, int]:
    """"HOST:PORT" or "HOST" (port 1883)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 1883
    try:
        value = int(port)
    except ValueError:
        raise click.BadParameter(f"{text!r}: the port is not a number", param_hint="--broker") from None
    if not host or not 0 < value < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint="--broker")
    return host, value


def _message_line(message) -> str:
    stamp = time.strftime("%H:%M:%S")
    extra = f" ts={message.timestamp}" if message.timestamp is not None else ""
    extra += f" nonce={message.nonce}" if message.nonce else ""
    fault = f"  [{message.fault}]" if message.fault else ""
    return (f"{stamp} {message.imei} {message.kind:<7} {message.profile:<16} {len(message.payload):>5} B "
            f"{message.topic}{extra}{fault}")


@sim.command("pebble")
@click.option("--count", type=click.IntRange(min=1), help="Devices to run (default: the stored fleet, or 1); "
              "more than stored adds new devices and keeps the others.")
@click.option("--profile", type=click.Choice(sorted(PROFILES) + ["mixed"]), default=DEFAULT_PROFILE,
              show_default=True, help="Firmware of new devices; 'mixed' cycles through all.")
@click.option("--owner", help="Owner address written to devices.json for new devices "
              "(default: an address made up once for the fleet).")
@click.option("--faults", "fault_spec", default="", metavar="SPEC",
              help="e.g. 'bad_signature=0.05,replay=0.02,skew=0.01,garbage=0.01,oversized=0.01,"
                   "nonce_reuse=0.01,unknown_device=0.01,leading_zero'.")
@click.option("--broker", help="HOST:PORT of the MQTT broker (default: mqtt.host/port of the config).")
@click.option("--fleet-dir", type=click.Path(file_okay=False), help="Where identities are kept "
              "(default: <data_dir>/fleet).")
@click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Run the duty cycle this many times faster than real time.")
@click.option("--period", type=click.IntRange(10, 86400), help="Upload period in seconds (device default 300).")
@click.option("--qos", type=click.IntRange(0, 1), default=0, show_default=True,
              help="QoS of device publishes (the firmware uses 0).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds.")
@click.option("--messages", type=click.IntRange(min=1), help="Stop after this many DATA messages per device.")
@click.option("--register/--no-register", default=False, show_default=True,
              help="Boot devices in registration mode (query, confirm the proposer, send CONFIG).")
@click.option("--seed", help="Make sensor values, nonces and fault choices reproducible (never reuse one "
              "against a gateway that saw it: repeated nonces are refused).")
@click.option("--quiet", "-q", is_flag=True, help="No line per published message.")
@click.option("--client-certs", type=click.Path(file_okay=False, exists=True),
              help="Connect with TLS and client certificates from DIR/<IMEI>/ (the broker's clients/ folder).")
@json_option
@config_option
@data_dir_option
def pebble(count, profile, owner, fault_spec, broker, fleet_dir, time_scale, period, qos, duration,
           messages, register, seed, quiet, client_certs, as_json, config_path, data_dir) -> None:
    """Emulate a fleet of Pebble trackers publishing signed data over MQTT.

    Identities persist in the fleet directory; register them with the gateway once with
    `w3gate device import <fleet-dir>/devices.json`. Ctrl-C or SIGTERM stops the fleet and
    prints the summary.
    """
    from hardware.errors import EmulatorError
    from hardware.pebble.faults import FaultPlan
    from hardware.pebble.fleet import Fleet
    from hardware.pebble.keystore import Keystore

    config = get_config(config_path, data_dir)
    host, port = parse_broker(broker) if broker else (config.mqtt.host, config.mqtt.port)
    directory = Path(fleet_dir) if fleet_dir else config.layout.fleet
    info = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    try:
        plan = FaultPlan.parse(fault_spec)
        keystore = Keystore(directory)
        stored = keystore.load()
        identities = keystore.ensure(count or max(len(stored), 1), profile=profile, owner=owner)
    except (W3gateError, EmulatorError) as e:
        raise click.ClickException(str(e)) from None
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        raise click.ClickException(f"broker {host}:{port} is unreachable: {e}") from None

    profiles = sorted({i.profile for i in identities})
    added = max(0, len(identities) - len(stored))
    info(f"{len(identities)} devices ({added} new; {', '.join(profiles)}) from {directory}; "
         f"broker {host}:{port}; faults {plan}")
    if added:
        info(f"register new devices with: w3gate device import {keystore.devices_path}")

    def on_message(message) -> None:
        click.echo(_message_line(message), err=as_json)

    def on_downlink(imei, topic, result) -> None:
        verdict = "applied" if result.accepted else "refused"
        click.echo(f"{time.strftime('%H:%M:%S')} {imei} downlink {topic}: {verdict}: {result.detail}",
                   err=as_json)

    try:
        fleet = Fleet(identities, host=host, port=port, qos=qos, time_scale=time_scale, upload_period=period,
                      faults=plan, register=register, seed=seed, on_message=None if quiet else on_message,
                      on_downlink=None if quiet else on_downlink,
                      client_certs=Path(client_certs) if client_certs else None)
    except EmulatorError as e:
        raise click.ClickException(str(e)) from None

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, fleet.stop)
        return await fleet.run(duration=duration, messages=messages)

    summary = asyncio.run(main())
    if as_json:
        emit_json(summary.to_dict())
    else:
        click.echo(summary.text())
    sys.stdout.flush()


COMMANDS = [sim]
