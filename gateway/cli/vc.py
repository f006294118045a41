"""``w3gate vc``: verifiable credentials about a device's records, signed with the node's DID key.

``w3gate vc issue --device ID --from T1 --to T2 [--out FILE]`` writes a JWT-VC (ES256K) stating
the device's DID and owner, how many of its records the node received in [T1, T2] and the
anchors covering them. ``w3gate vc verify FILE`` checks one offline and against the chain: exit
0 when valid, 1 when invalid (with the reason), 3 when it cannot tell (the chain cannot be
reached), as ``w3gate proof verify`` does. docs/credentials.md says what a credential holds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option

EXIT_INVALID, EXIT_UNKNOWN = 1, 3
PRESETS = {4689: "iotex-mainnet", 4690: "iotex-testnet"}  # chains whose public RPC is used without --rpc


@click.group()
def vc() -> None:
    """Issue and verify credentials about a device's records (W3C VC, JWT, ES256K)."""


@vc.command("issue")
@click.option("--device", required=True, help="The Pebble's IMEI or the legacy sensor's id.")
@click.option("--from", "from_", required=True, metavar="T1", help="Window start: ISO 8601 (UTC without an offset), "
                                                                    "epoch seconds, or now.")
@click.option("--to", required=True, metavar="T2", help="Window end, inclusive; it must have passed.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the credential here (default: print it).")
@click.option("--allow-unanchored", is_flag=True,
              help="Issue even if some records are not anchored yet; the credential counts them apart.")
@click.option("--expires", metavar="TIME", help="An expiry (exp) for the credential; default: none.")
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False),
              help="Unlocks the node key (default: [chain] key_passphrase_file, else a prompt).")
@json_option
@config_option
@data_dir_option
def issue(device, from_, to, out, allow_unanchored, expires, passphrase_file, as_json, config_path, data_dir) -> None:
    """Issue a credential about DEVICE's records received from T1 to T2, signed by the node key."""
    import time

    from gateway.chain.keystore import load_key, read_identity, read_passphrase_file
    from gateway.credentials.subject import collect
    from gateway.credentials.vc import CredentialError, build, iso_ms, parse_time

    config = get_config(config_path, data_dir)
    now = time.time()
    from_ms, to_ms = parse_time(from_, now=now), parse_time(to, now=now)
    if to_ms > now * 1000:
        raise CredentialError(f"the window ends at {iso_ms(to_ms)}, in the future: its count would not be final "
                              "(end it now at the latest)", reason="bad_time")
    expires_ms = parse_time(expires, now=now) if expires else None
    if expires_ms is not None and expires_ms <= now * 1000:
        raise CredentialError(f"--expires {expires} has passed", reason="bad_time")
    identity = read_identity(config.layout.node_key)
    subject = collect(config.layout, device, from_ms, to_ms, issuer_address=identity.address,
                      allow_unanchored=allow_unanchored)
    source = passphrase_file or config.chain.key_passphrase_file
    passphrase = read_passphrase_file(source) if source else click.prompt("Passphrase", hide_input=True)
    account = load_key(config.layout.node_key, passphrase)
    token = build(subject, identity.address, bytes(account.key), now=now, expires_ms=expires_ms)
    if out:
        Path(out).write_text(token + "\n")
    if as_json:
        return emit_json({"file": out, "jwt": token, "issuer": identity.did, "credentialSubject": subject.to_dict()})
    if not out:
        click.echo(token)
        return
    who = subject.did or f"legacy sensor {subject.device}"
    click.echo(f"issued {out}: {subject.count} records of {who} received {iso_ms(subject.first_ms)} .. "
               f"{iso_ms(subject.last_ms)}, {len(subject.anchors)} anchored batches"
               + (f", {subject.unanchored} records not anchored" if subject.unanchored else "")
               + f"; issuer {identity.did}")


@vc.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--rpc", help="JSON-RPC URL of the chain, or iotex-mainnet / iotex-testnet "
                            "(default: the IoTeX chain the credential names).")
@click.option("--registry", help="The ProofRegistry you trust (default: the one the credential names).")
@click.option("--offline", is_flag=True, help="Check only the signature and the structure, not the chain.")
@json_option
def verify(file, rpc, registry, offline, as_json) -> None:
    """Check a credential FILE: its signature and structure, then each anchor against the chain.

    Exit 0: valid. Exit 1: invalid, with the reason. Exit 3: cannot tell (the chain could not be
    reached or refused to answer)."""
    from gateway.chain.sender import ChainError, resolve_network
    from gateway.credentials import vc as credentials
    from gateway.proofs.verify import CannotTell

    if offline and (rpc or registry):
        raise click.UsageError("--offline checks no chain: leave out --rpc and --registry")
    if registry is not None and not credentials.HEX_ADDRESS.fullmatch(registry):
        raise click.UsageError(f"--registry {registry!r} is not a 0x address of 40 hex digits")
    try:
        if file == "-":
            token = sys.stdin.buffer.read(credentials.MAX_SIZE + 1)
        else:
            with open(file, "rb") as f:
                token = f.read(credentials.MAX_SIZE + 1)
    except OSError as e:
        raise click.ClickException(f"{file}: cannot read it ({e.strerror or e})") from None
    url = None
    if not offline:
        spec = rpc
        if spec is None:
            try:
                chain_id = credentials.check_offline(token).subject.chain_id
            except credentials.Invalid:
                chain_id = None  # verify() says why
            spec = PRESETS.get(chain_id) if chain_id else None
            if chain_id and spec is None:
                raise click.UsageError(f"the credential's anchors are on chain {chain_id}: give --rpc URL "
                                       "(or --offline)")
        try:
            url = resolve_network(spec).rpc_url if spec else None
        except ChainError as e:
            raise click.ClickException(str(e)) from None
    try:
        verdict = credentials.verify(token, url, registry)
    except CannotTell as e:
        if as_json:
            emit_json({"valid": None, "reason": e.reason, "detail": e.detail, "checked": [], "notes": []})
        click.echo(f"cannot tell ({e.reason}): {e.detail}", err=True)
        sys.exit(EXIT_UNKNOWN)
    if as_json:
        emit_json(verdict.to_dict())
    elif verdict.ok:
        click.echo(f"valid: {verdict.detail}")
        for line in verdict.checked:
            click.echo(f"checked: {line}")
        for note in verdict.notes:
            click.echo(f"note: {note}")
    else:
        click.echo(f"INVALID ({verdict.reason}): {verdict.detail}")
    if not verdict.ok:
        sys.exit(EXIT_INVALID)


COMMANDS = [vc]
