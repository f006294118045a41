"""``w3gate service install|uninstall|status``: w3gate as a systemd service on Debian or Raspberry
Pi OS (docs/service.md): the ``w3gate`` account, ``/etc/w3gate/w3gate.toml``, ``/var/lib/w3gate``,
``w3gate.service`` and ``w3gate-broker.service``, the same as on the appliance image."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.common import emit_json, json_option

EXIT_NOT_RUNNING = 3  # as `systemctl status` says of a unit that is not active


@click.group()
def service() -> None:
    """w3gate as a system service (systemd): install, uninstall, status."""


@service.command()
@click.option("--root", "root", type=click.Path(file_okay=False, path_type=Path),
              help="Stage into this directory (an image's root): run nothing, print the commands.")
@click.option("--user", default="w3gate", show_default=True, help="The service account.")
@click.option("--w3gate", "w3gate_path", metavar="PATH",
              help="The w3gate executable as the target system sees it (default: this one).")
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
def install(root: Path | None, user: str, w3gate_path: str | None, dry_run: bool) -> None:
    """Install and start w3gate as a service: the account (no login), /etc/w3gate/w3gate.toml from
    the defaults (an existing one is kept), /var/lib/w3gate (0700), the units; enable and start them."""
    from gateway.service.install import install as do_install
    from gateway.service.units import current_program

    do_install(program=current_program(w3gate_path), root=root.resolve() if root else None, user=user,
               dry_run=dry_run, echo=click.echo)


@service.command()
@click.option("--root", "root", type=click.Path(file_okay=False, path_type=Path),
              help="Remove from this staging directory instead of this system.")
@click.option("--purge-data", is_flag=True,
              help="Also delete /etc/w3gate and the data directory (the node key, every buffered record).")
@click.option("--yes", is_flag=True, help="Do not ask before --purge-data deletes.")
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
def uninstall(root: Path | None, purge_data: bool, yes: bool, dry_run: bool) -> None:
    """Stop, disable and remove the units. Configuration and data stay unless --purge-data."""
    from gateway.service.install import uninstall as do_uninstall

    if purge_data and not (yes or dry_run):
        if not sys.stdin.isatty():
            raise click.UsageError("--purge-data deletes the node key and every buffered record: add --yes")
        click.confirm("Delete the configuration and the data directory (node key, records) for good?", abort=True)
    do_uninstall(root=root.resolve() if root else None, purge_data=purge_data, dry_run=dry_run, echo=click.echo)


@service.command()
@json_option
@click.option("--lines", default=15, show_default=True, type=click.IntRange(0, 1000),
              help="How many of the gateway's last journal lines.")
def status(as_json: bool, lines: int) -> None:
    """Whether the units are installed, active and enabled, and the gateway's last log lines.
    Exits 3 when a unit is not active."""
    from gateway.service.install import status as get_status

    out = get_status(lines=lines)
    if as_json:
        emit_json(out)
    else:
        for unit in out["units"]:
            click.echo(f"{unit['name']:<22} {'installed' if unit['installed'] else 'not installed':<14} "
                       f"{unit['active']:<10} {unit['enabled']}")
        if out["journal"]:
            click.echo(f"\nlast lines of {out['units'][0]['name']}:")
            for line in out["journal"]:
                click.echo(f"  {line}")
        if out["note"]:
            click.echo(f"\nnote: {out['note']}")
    if any(u["active"] != "active" for u in out["units"] if u["installed"]) or not out["units"][0]["installed"]:
        sys.exit(EXIT_NOT_RUNNING)


COMMANDS = [service]
