"""``w3gate doctor``: whether this machine is set up to run the gateway, one line per check with
the command or setting that fixes what is not ok (docs/doctor.md); exit 1 when a check FAILs."""
from __future__ import annotations

import click

from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option


@click.command()
@json_option
@config_option
@data_dir_option
def doctor(as_json, config_path, data_dir) -> None:
    """Check the broker, clock, disk, permissions, Bluetooth, serial ports, chain and ports.

    Each line: ok / WARN / FAIL / skip, the check, what was found and, when not ok, how to fix
    it. Exit status 0 when nothing FAILs (warnings allowed), 1 otherwise."""
    from gateway.doctor import run_checks

    config = get_config(config_path, data_dir)
    report = run_checks(config)
    if as_json:
        emit_json(report.to_dict())
    else:
        for line in report.lines():
            click.echo(line)
    click.get_current_context().exit(report.exit_code)


COMMANDS = [doctor]
