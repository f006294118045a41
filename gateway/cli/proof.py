"""``w3gate proof``: the proof that this gateway saw a record, and its check against the chain.

``w3gate proof RECORD_ID [--json]`` prints the record, its Merkle path, the batch root and the
anchoring transaction (``--json`` prints the proof file, docs/proofs.md). ``w3gate proof verify
FILE --rpc URL --registry ADDR`` checks such a file against the chain alone and prints what it
proved apart from what it could not: exit 0 when valid, 1 when invalid (with the reason), 3 when
it cannot tell (the chain cannot be reached).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gateway.buffer.store import RecordStore
from gateway.chain.datakey import cipher_from_config
from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, iso, json_option
from gateway.errors import W3gateError
from gateway.proofs.journal import BatchJournal

EXIT_INVALID, EXIT_UNKNOWN = 1, 3


class _ProofGroup(click.Group):
    """``proof RECORD_ID`` is short for ``proof show RECORD_ID``; ``proof verify`` is a command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ProofGroup)
def proof() -> None:
    """Prove a record against the chain: `w3gate proof RECORD_ID`, `w3gate proof verify FILE`."""


@proof.command("show")
@click.argument("record_id", type=int)
@json_option
@config_option
@data_dir_option
def show(record_id, as_json, config_path, data_dir) -> None:
    """Print the proof of record RECORD_ID (its seq, as `w3gate records` lists it)."""
    config = get_config(config_path, data_dir)
    layout = config.layout
    if not layout.records.exists():
        raise click.ClickException(f"no records in {config.data_dir} yet")
    try:
        store = RecordStore(layout.records, readonly=True, cipher=cipher_from_config(config))
        try:
            doc = store.get(record_id)
            if doc is not None and "payload_error" in doc:  # encrypted at rest, and it does not open
                raise click.ClickException(f"record {record_id} cannot be proven: {doc['payload_error']}")
            p = BatchJournal(layout.proofs, store).proof_for(record_id)
        finally:
            store.close()
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        return emit_json(p)
    r, b = p["record"], p["batch"]
    click.echo(f"record   {r['seq']} device {r['device']} ({r['device_did']}) {r['kind']}, "
               f"received {iso(r['rx'])} = {r['received_ms']} ms")
    click.echo(f"payload  sha256 {r['payload_sha256']}\nsigned   {r['signature']}")
    click.echo(f"leaf     {p['leaf']} (index {p['index']} of {b['count']})")
    for depth, sibling in enumerate(p["path"]):
        click.echo(f"path {depth:>2} {sibling}")
    click.echo(f"root     {p['root']} batch {b['sequence']} (records {b['first_seq']}..{b['last_seq']})")
    click.echo(f"gateway  {p['gateway']} ({p['gateway_did']}) registry {p['registry']} chain {p['chain_id']}")
    if p["anchor"]:
        click.echo(f"anchored tx {p['anchor']['tx']} block {p['anchor']['block']}")
    else:
        click.echo("anchored not yet: the batch is sealed, its anchor is not confirmed")


@proof.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--rpc", required=True, help="JSON-RPC URL of the chain, or iotex-mainnet / iotex-testnet.")
@click.option("--registry", required=True, help="Address of the ProofRegistry contract (not taken from the file).")
@click.option("--gateway", help="Expected gateway address or did:io DID (default: the one the file names).")
@click.option("--any-gateway", is_flag=True,
              help="Accept whichever gateway anchored the root when neither the file nor --gateway names one.")
@json_option
def verify(file, rpc, registry, gateway, any_gateway, as_json) -> None:
    """Check a proof FILE (`w3gate proof RECORD_ID --json`) against the chain alone.

    Exit 0: valid, every field printed under "proven" was checked. Exit 1: invalid, with the
    reason. Exit 3: cannot tell (the chain could not be reached or refused to answer)."""
    from gateway.chain.sender import ChainError, resolve_network
    from gateway.proofs.verify import CannotTell, verify_proof

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{file}: not a proof file ({e})") from None
    try:
        url = resolve_network(rpc).rpc_url
    except ChainError as e:
        raise click.ClickException(str(e)) from None
    expected = gateway.removeprefix("did:io:") if gateway else None
    try:
        verdict = verify_proof(data, url, registry, gateway=expected, any_gateway=any_gateway)
    except CannotTell as e:
        if as_json:
            emit_json({"valid": None, "reason": e.reason, "detail": e.detail, "notes": [],
                       "proven": {}, "not_proven": {}})
        click.echo(f"cannot tell ({e.reason}): {e.detail}", err=True)
        sys.exit(EXIT_UNKNOWN)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if as_json:
        emit_json(verdict.to_dict())
    elif verdict.ok:
        _print_valid(verdict)
    else:
        click.echo(f"INVALID ({verdict.reason}): {verdict.detail}")
    if not verdict.ok:
        sys.exit(EXIT_INVALID)


def _show(value) -> str:
    if isinstance(value, list):
        return f"{len(value)} hashes" if all(isinstance(v, str) for v in value) else json.dumps(value)
    if isinstance(value, dict):
        return json.dumps(value)
    return "null" if value is None else str(value)


def _print_valid(verdict) -> None:
    """The verdict line, the notes, then what was proven and, apart, what was not."""
    click.echo(f"valid: {verdict.detail}")
    for note in verdict.notes:
        click.echo(f"note: {note}")
    click.echo("proven:")
    width = max(map(len, [*verdict.proven, *verdict.not_proven]))
    for path, value in verdict.proven.items():
        if path == "gateway.registration":
            removed = value["removed_in_block"]
            value = (f"added in block {value['added_in_block']}, anchor in block {value['anchor_block']}, "
                     + (f"removed in block {removed}" if removed is not None else "not removed since"))
        click.echo(f"  {path:<{width}}  {_show(value)}")
    if verdict.not_proven:
        click.echo("not proven (the gateway's word only):")
        for path, entry in verdict.not_proven.items():
            click.echo(f"  {path:<{width}}  {_show(entry['value'])}  ({entry['why']})")


COMMANDS = [proof]
