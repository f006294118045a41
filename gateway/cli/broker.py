"""``w3gate broker setup|sync|show|run`` and ``w3gate broker cert``: the secure mosquitto w3gate
writes and keeps in step with its devices and publishers (docs/broker.md)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from gateway.applets.project import ProjectStore
from gateway.applets.publishers import Publishers
from gateway.broker import access, certs
from gateway.broker.conf import managed_conf
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option
from gateway.codec.pebble import PROFILES
from gateway.config import Config
from gateway.layout import ClientFiles
from gateway.storage import atomic_write, private_dir
from gateway.verify.registry import Registry


def identities(config: Config) -> list[access.Identity]:
    """Every broker identity w3gate knows: itself, each registered Pebble, each publisher that has
    a broker password (tokens made before w3gate 0.5 have none: `w3gate publisher add` again)."""
    files = config.layout.broker
    out = access.gateway_identities(access.gateway_secret(files, create=True))
    for device in Registry(config.layout.devices):
        profile = PROFILES.get(device.profile)
        out.append(access.pebble_identity(device.imei, g1=profile is not None and profile.wire == "json"))
    store = ProjectStore(config.layout)
    publishers = Publishers(store)
    for project in store.all():
        for entry in publishers.list(project.name):
            if entry.get("broker"):
                out.append(access.publisher_identity(project.name, entry["key"], entry["broker"]))
    return out


def sync_broker(config: Config) -> None:
    """After a device or publisher changed: the managed broker's files follow (when it is set up)."""
    if config.broker.managed and config.layout.broker.conf.exists():
        access.sync(config.layout.broker, identities(config))


def device_bundle(config: Config, imei: str, *, g1: bool) -> ClientFiles | None:
    """A Pebble's client certificate (its broker identity), when the managed broker is set up."""
    if not (config.broker.managed and config.layout.broker.conf.exists()):
        return None
    return certs.issue_client(config.layout.broker, f"nrf-{imei}" if g1 else imei)


def forget_device(config: Config, imei: str) -> None:
    """A removed Pebble's bundles go; sync_broker then takes its access away."""
    for name in (imei, f"nrf-{imei}"):
        shutil.rmtree(config.layout.broker.client(name).dir, ignore_errors=True)


@click.group()
def broker() -> None:
    """The secure mosquitto configuration w3gate writes and manages."""


@broker.command()
@click.option("--renew-server-cert", is_flag=True, help="Issue a new TLS certificate (e.g. new host names).")
@config_option
@data_dir_option
def setup(renew_server_cert, config_path, data_dir) -> None:
    """Write broker/: the local CA, the TLS certificate, the gateway's identity, mosquitto.conf,
    the password file and the access rules. Safe to run again: what exists is kept."""
    config = get_config(config_path, data_dir)
    files = config.layout.broker
    private_dir(files.dir)
    certs.ensure_ca(files)
    if renew_server_cert or not files.server_cert.exists():
        certs.issue_server(files, certs.host_names(list(config.broker.hostnames)))
    atomic_write(files.conf, managed_conf(files, config.broker).encode(), mode=0o600)
    access.sync(files, identities(config))
    click.echo(f"broker configuration in {files.dir}/")
    click.echo(f"  run it:   mosquitto -c {files.conf.resolve()}   (or: w3gate broker run)")
    click.echo(f"  devices:  TLS on port {config.broker.device_port} with a client certificate "
               f"(w3gate device add issues one); trust {files.ca_cert.resolve()}")
    if config.mqtt.port != config.broker.local_port:
        click.echo(f"warning: mqtt.port is {config.mqtt.port} but the broker's local listener is "
                   f"{config.broker.local_port}: the gateway would not reach it", err=True)


@broker.command()
@config_option
@data_dir_option
def sync(config_path, data_dir) -> None:
    """Rewrite the identities and access rules from the devices and publishers, and reload."""
    config = get_config(config_path, data_dir)
    if not config.layout.broker.conf.exists():
        raise click.ClickException("the broker is not set up (w3gate broker setup)")
    changed = access.sync(config.layout.broker, identities(config))
    click.echo("identities and access rules updated" if changed else "identities and access rules unchanged")


@broker.command()
@json_option
@config_option
@data_dir_option
def show(as_json, config_path, data_dir) -> None:
    """Where the broker's files are, its listeners and certificates, and who may connect."""
    config = get_config(config_path, data_dir)
    files = config.layout.broker
    if not files.conf.exists():
        raise click.ClickException("the broker is not set up (w3gate broker setup)")
    out = {"conf": str(files.conf.resolve()), "ca": certs.describe(certs.load_cert(files.ca_cert)),
           "server": certs.describe(certs.load_cert(files.server_cert)),
           "listeners": {"local": f"127.0.0.1:{config.broker.local_port}",
                         "devices": f"{config.broker.device_listen}:{config.broker.device_port}" if config.broker.device_port else None,
                         "clients": f"{config.broker.device_listen}:{config.broker.client_port}" if config.broker.client_port else None},
           "identities": [i.username for i in identities(config)]}
    if as_json:
        return emit_json(out)
    click.echo(f"mosquitto -c {out['conf']}")
    for name, where in out["listeners"].items():
        click.echo(f"  {name:<8} {where or 'off'}")
    click.echo(f"CA      {out['ca']['subject']}  sha256 {out['ca']['sha256'][:16]}…")
    click.echo(f"server  {', '.join(out['server']['names'])}  until {out['server']['not_after'][:10]}")
    click.echo(f"{len(out['identities'])} identities: {', '.join(out['identities'])}")


@broker.command()
@config_option
@data_dir_option
def run(config_path, data_dir) -> None:
    """Run mosquitto in the foreground with the managed configuration."""
    config = get_config(config_path, data_dir)
    if not config.layout.broker.conf.exists():
        raise click.ClickException("the broker is not set up (w3gate broker setup)")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(exe, os.X_OK):
        raise click.ClickException("mosquitto is not installed (apt-get install mosquitto)")
    sys.stdout.flush()
    os.execv(exe, [exe, "-c", str(config.layout.broker.conf.resolve())])


@broker.group()
def cert() -> None:
    """Certificates: the broker's own, and client certificates for devices."""


@cert.command("server")
@click.option("--cert", "cert_path", type=click.Path(exists=True, dir_okay=False), help="Use this certificate ...")
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False), help="... and its key.")
@config_option
@data_dir_option
def cert_server(cert_path, key_path, config_path, data_dir) -> None:
    """Issue the broker's TLS certificate from the local CA, or install one you supply."""
    config = get_config(config_path, data_dir)
    files = config.layout.broker
    if bool(cert_path) != bool(key_path):
        raise click.UsageError("give both --cert and --key, or neither")
    made = (certs.install_server(files, Path(cert_path), Path(key_path)) if cert_path
            else certs.issue_server(files, certs.host_names(list(config.broker.hostnames))))
    access.reload(files)
    click.echo(f"server certificate for {', '.join(certs.describe(made)['names']) or made.subject.rfc4514_string()}"
               " (restart mosquitto to use it)")


@cert.command("client")
@click.argument("name")
@config_option
@data_dir_option
def cert_client(name, config_path, data_dir) -> None:
    """Issue a client certificate with common name NAME (a Pebble's IMEI, or nrf-<IMEI> for G1)."""
    config = get_config(config_path, data_dir)
    bundle = certs.issue_client(config.layout.broker, name)
    click.echo(f"{bundle.dir}/: {bundle.ca.name}, {bundle.cert.name}, {bundle.key.name} "
               "(provision them, then delete the key here)")


COMMANDS = [broker]
