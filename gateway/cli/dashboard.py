"""``w3gate dashboard setup``: what the dashboard needs to be served on the network.

Beyond loopback the dashboard must use HTTPS and ask for a password (docs/dashboard.md). This
makes both in ``<data dir>/dashboard/``: a certificate from the gateway's local CA (the one its
broker and devices already use, ``broker/ca.crt``) naming this host, and a random password; then
it prints the ``[dashboard]`` settings to put in the configuration. Nothing is replaced unless
asked: a new certificate surprises every browser that trusts the old one, and a new password
every Prometheus server that has it.
"""
from __future__ import annotations

import secrets
import socket

import click

from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option


def this_host(extra: tuple[str, ...]) -> list[str]:
    """What the certificate names: ``extra``, this host's name and ``NAME.local`` (avahi), the
    address it reaches the network from (when it has one), and loopback."""
    from gateway.broker.certs import host_names

    hostname = socket.gethostname()
    found = [*extra, f"{hostname}.local"] if hostname and hostname != "localhost" else list(extra)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: picks the route, sends nothing
            found.append(probe.getsockname()[0])
    except OSError:
        pass  # no network now: names and loopback only
    return host_names(found)


@click.group()
def dashboard() -> None:
    """The dashboard served by `w3gate run` (docs/dashboard.md)."""


@dashboard.command("setup")
@click.option("--name", "names", multiple=True, metavar="HOST",
              help="Another name or address for the certificate (repeatable); this host's name, NAME.local, "
                   "its address and loopback are always named.")
@click.option("--listen", default="0.0.0.0", show_default=True, help="The address to serve on (printed settings).")
@click.option("--new-certificate", is_flag=True, help="Issue a new certificate even if there is one.")
@click.option("--new-password", is_flag=True, help="Make a new password even if there is one.")
@json_option
@config_option
@data_dir_option
def setup(names: tuple[str, ...], listen: str, new_certificate: bool, new_password: bool, as_json: bool,
          config_path: str | None, data_dir: str | None) -> None:
    """Make the dashboard's certificate (from the gateway's CA) and password, and print the settings."""
    from gateway.broker.certs import describe, issue_server, load_cert
    from gateway.storage import atomic_write, private_dir

    config = get_config(config_path, data_dir)
    files = config.layout.dashboard
    private_dir(files.dir)
    made, password = [], None
    if new_password or not files.password.exists():
        password = secrets.token_urlsafe(18)  # 144 bits
        atomic_write(files.password, (password + "\n").encode(), mode=0o600)
        made.append("password")
    if new_certificate or not (files.tls_cert.exists() and files.tls_key.exists()):
        cert = issue_server(config.layout.broker, this_host(names), files.tls_cert, files.tls_key)
        made.append("certificate")
    else:
        cert = load_cert(files.tls_cert)
    settings = {"listen": listen, "port": config.dashboard.port, "tls_cert": str(files.tls_cert),
                "tls_key": str(files.tls_key), "password_file": str(files.password)}
    ca = str(config.layout.broker.ca_cert)
    if as_json:
        return emit_json({"made": made, "settings": settings, "certificate": describe(cert), "ca": ca,
                          "password": password})
    click.echo(f"made: {', '.join(made)}" if made else "kept the certificate and password made before")
    click.echo(f"certificate for {', '.join(describe(cert)['names'])}; browsers and Prometheus trust it "
               f"through the gateway's CA: {ca}")
    if password:
        click.echo(f"password (shown once; it is in {files.password}): {password}")
    click.echo("put these in the configuration, then restart the gateway:\n")
    click.echo("[dashboard]")
    for key, value in settings.items():
        click.echo(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"')


COMMANDS = [dashboard]
