"""``w3gate key``: the node key (signs anchors, names the gateway as ``did:io:<address>``).

The key lives encrypted in ``<data dir>/node-key.json`` (V3 keystore, mode 0600). The
passphrase comes from ``--passphrase-file`` (first line) or a hidden prompt; it is never an
option value, which would end up in the shell history and the process list.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from gateway.chain.keystore import (OPERATOR_NAME, KeystoreError, ensure_key, load_key, new_key,
                                    operator_keystore_path, read_identity, read_passphrase_file, save_key)
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option

passphrase_file_option = click.option(
    "--passphrase-file", type=click.Path(exists=True, dir_okay=False),
    help="Read the passphrase from the first line of this file instead of prompting.")


operator_option = click.option(
    "--operator", metavar="NAME", help="An operator key for applets' transactions (a project names it), "
                                      "instead of the node key.")


def _path(config_path, data_dir, operator: str | None = None) -> Path:
    layout = get_config(config_path, data_dir).layout
    if operator is None:
        return layout.node_key
    if not OPERATOR_NAME.match(operator):
        raise click.ClickException("an operator name is 1-32 letters, digits, '_' or '-'")
    return operator_keystore_path(layout, operator)


def _passphrase(passphrase_file: str | None, *, confirm: bool) -> str:
    if passphrase_file:
        try:
            return read_passphrase_file(passphrase_file)
        except KeystoreError as e:
            raise click.ClickException(str(e)) from None
    return click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)


def _report(identity, as_json: bool, verb: str) -> None:
    if as_json:
        return emit_json(identity.to_dict())
    click.echo(f"{verb} {identity.path}\naddress {identity.address}\ndid     {identity.did}")


@click.group()
def key() -> None:
    """Create, import and show the node key (never printed)."""


@key.command("new")
@operator_option
@passphrase_file_option
@click.option("--force", is_flag=True, help="Replace an existing node key (its identity is lost).")
@json_option
@config_option
@data_dir_option
def new(operator, passphrase_file, force, as_json, config_path, data_dir) -> None:
    """Create a random node key (or operator key), encrypted with a passphrase."""
    path = _path(config_path, data_dir, operator)
    if path.exists() and not force:
        raise click.ClickException(f"{path} already holds a node key (--force replaces it)")
    try:
        identity = new_key(path, _passphrase(passphrase_file, confirm=True), overwrite=force)
    except KeystoreError as e:
        raise click.ClickException(str(e)) from None
    _report(identity, as_json, "created")


@key.command("ensure")
@click.option("--passphrase-file", required=True, type=click.Path(dir_okay=False),
              help="Unlocks the key; written (random, 0600) when the key is made now and the file is missing.")
@json_option
@config_option
@data_dir_option
def ensure(passphrase_file, as_json, config_path, data_dir) -> None:
    """Make the node key if there is none, with a random passphrase in --passphrase-file (what
    the service does at its first start: each device makes its own identity). An existing key
    or passphrase file is never changed."""
    path = _path(config_path, data_dir)
    try:
        identity, made = ensure_key(path, passphrase_file)
    except KeystoreError as e:
        raise click.ClickException(str(e)) from None
    _report(identity, as_json, "created" if made else "kept")


@key.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@operator_option
@passphrase_file_option
@click.option("--force", is_flag=True, help="Replace an existing node key (its identity is lost).")
@json_option
@config_option
@data_dir_option
def import_(source, operator, passphrase_file, force, as_json, config_path, data_dir) -> None:
    """Import a key from SOURCE: a file holding the private key in hex, or a V3 keystore JSON
    (unlocked with the same passphrase, which then protects the node's copy)."""
    path = _path(config_path, data_dir, operator)
    if path.exists() and not force:
        raise click.ClickException(f"{path} already holds a node key (--force replaces it)")
    try:
        text = Path(source).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise click.ClickException(f"{source} is neither a hex private key nor a V3 keystore (not text)") from None
    try:
        if text.startswith("{"):
            passphrase = _passphrase(passphrase_file, confirm=False)
            try:
                json.loads(text)
            except ValueError as e:
                raise KeystoreError(f"{source} is not JSON: {e}", reason="corrupt") from None
            private = load_key(source, passphrase).key
        else:
            private = text.splitlines()[0].strip() if text else ""
            passphrase = _passphrase(passphrase_file, confirm=True)
        identity = save_key(path, private, passphrase, overwrite=force)
    except KeystoreError as e:
        raise click.ClickException(str(e)) from None
    _report(identity, as_json, "imported into")


@key.command("show")
@operator_option
@json_option
@config_option
@data_dir_option
def show(operator, as_json, config_path, data_dir) -> None:
    """Print the node's (or an operator's) address and DID (no passphrase needed; the key is never shown)."""
    try:
        identity = read_identity(_path(config_path, data_dir, operator))
    except KeystoreError as e:
        raise click.ClickException(str(e)) from None
    _report(identity, as_json, "keystore")


COMMANDS = [key]
