"""``w3gate chain``: set up and inspect the chain side of anchoring in one command each.

    w3gate chain deploy-registry      # a ProofRegistry owned by the node key, this gateway added
    w3gate chain add-gateway ADDRESS  # (the registry's owner) let another gateway anchor
    w3gate chain remove-gateway ADDRESS
    w3gate chain status               # network, the node key's funds, the registry's view of us

The network is ``[chain] network`` (or ``--network``); the owner signs with the node key unless
``--owner-keystore`` names another V3 keystore. The passphrase comes from ``--passphrase-file``,
then ``[chain] key_passphrase_file``, then a prompt.
"""
from __future__ import annotations

import time

import click

from gateway.cli.common import config_option, data_dir_option, emit_json, get_config, json_option
from gateway.errors import W3gateError
from gateway.status import pid_alive, read_status

network_option = click.option("--network", help="iotex-mainnet, iotex-testnet or an http(s) JSON-RPC URL "
                                                "(default: [chain] network).")
registry_option = click.option("--registry", help="The ProofRegistry's address (default: [chain] registry).")
owner_options = [
    click.option("--owner-keystore", type=click.Path(exists=True, dir_okay=False),
                 help="Sign with this V3 keystore instead of the node key."),
    click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False),
                 help="The key's passphrase, first line (default: [chain] key_passphrase_file)."),
]


def _owner_options(fn):
    for option in reversed(owner_options):
        fn = option(fn)
    return fn


def _connect(config, network: str | None):
    from gateway.chain.sender import connect, resolve_network

    net = resolve_network(network or config.chain.network)
    w3 = connect(net, timeout=30)
    try:
        chain_id = w3.eth.chain_id
    except OSError as e:
        raise click.ClickException(f"{net.rpc_url} cannot be reached: {e}") from None
    if net.chain_id is not None and chain_id != net.chain_id:
        raise click.ClickException(f"{net.rpc_url} is chain {chain_id}, not {net.name} ({net.chain_id})")
    return w3, net


def _owner(config, owner_keystore: str | None, passphrase_file: str | None):
    """The signing account: the node key, or ``owner_keystore``; refused while a running gateway
    sends with the same key (both would take the same nonces)."""
    from gateway.chain.keystore import load_key, read_passphrase_file

    path = owner_keystore or config.layout.node_key
    if not owner_keystore:
        info = read_status(config.layout.status) or {}
        if info.get("chain") and pid_alive(info.get("pid")) and time.time() - info.get("time", 0) < 10:
            raise click.ClickException("the gateway is running and sends with the node key: stop it first "
                                       "(`w3gate chain` would take the same nonces), or sign with --owner-keystore")
    source = passphrase_file or config.chain.key_passphrase_file
    passphrase = read_passphrase_file(source) if source else click.prompt("Passphrase", hide_input=True)
    return load_key(path, passphrase)




def _address(value: str) -> str:
    """An address, or a gateway's DID (``did:io:0x…``)."""
    from web3 import Web3

    value = value.removeprefix("did:io:")
    if not Web3.is_address(value):
        raise click.BadParameter(f"{value!r} is not an address or did:io:0x… DID")
    return Web3.to_checksum_address(value)


@click.group()
def chain() -> None:
    """Deploy the proof registry, register gateways, see the chain's side of anchoring."""


@chain.command("deploy-registry")
@click.option("--no-add", is_flag=True, help="Do not register this gateway (the node key) in it.")
@network_option
@_owner_options
@json_option
@config_option
@data_dir_option
def deploy_registry(no_add, network, owner_keystore, passphrase_file, as_json, config_path, data_dir) -> None:
    """Deploy a ProofRegistry owned by the signing key and register this gateway in it."""
    from gateway.chain.keystore import read_identity
    from gateway.proofs import registry

    config = get_config(config_path, data_dir)
    w3, net = _connect(config, network)
    owner = _owner(config, owner_keystore, passphrase_file)
    try:
        sent = registry.deploy(w3, owner)
        added = None
        if not no_add:
            gateway = read_identity(config.layout.node_key).address
            added = registry.add_gateway(w3, owner, sent.contract, gateway)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    out = {"registry": sent.contract, "network": net.name, "chain_id": w3.eth.chain_id, "owner": owner.address,
           "deployed": {"tx": sent.tx, "block": sent.block, "gas_used": sent.gas_used},
           "gateway_added": None if added is None else {"gateway": gateway, "tx": added.tx, "block": added.block}}
    if as_json:
        return emit_json(out)
    click.echo(f"registry  {sent.contract} on {net.name} (chain {out['chain_id']}), block {sent.block}, "
               f"{sent.gas_used} gas; owner {owner.address}")
    if added is not None:
        click.echo(f"gateway   {gateway} added in block {added.block}")
    click.echo(f'next: put  registry = "{sent.contract}"  in the [chain] section of your w3gate.toml '
               "(or set W3GATE_CHAIN_REGISTRY), then restart the gateway")


def _owner_call(action: str, address: str, registry_address, network, owner_keystore, passphrase_file,
                config_path, data_dir, as_json) -> None:
    from gateway.proofs import registry

    config = get_config(config_path, data_dir)
    registry_address = registry_address or config.chain.registry
    if not registry_address:
        raise click.ClickException("no registry: give --registry or set [chain] registry")
    w3, _ = _connect(config, network)
    owner = _owner(config, owner_keystore, passphrase_file)
    try:
        sent = getattr(registry, f"{action}_gateway")(w3, owner, registry_address, address)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        return emit_json({"gateway": address, "registry": registry_address, "tx": sent.tx, "block": sent.block})
    click.echo(f"gateway {address} {'added to' if action == 'add' else 'removed from'} {registry_address} "
               f"in block {sent.block} (tx {sent.tx})")


def _gateway_admin(action: str, help_text: str):
    """``add-gateway`` / ``remove-gateway``: the same options, one owner transaction."""
    def command(address, registry, network, owner_keystore, passphrase_file, as_json, config_path, data_dir):
        _owner_call(action, address, registry, network, owner_keystore, passphrase_file, config_path, data_dir,
                    as_json)
    command.__doc__ = help_text
    for decorate in reversed([chain.command(f"{action}-gateway"), click.argument("address", type=_address),
                              registry_option, network_option, _owner_options, json_option, config_option,
                              data_dir_option]):
        command = decorate(command)
    return command


add_gateway = _gateway_admin("add", "Let the gateway ADDRESS (or did:io:0x…) anchor in the registry (its owner signs).")
remove_gateway = _gateway_admin("remove", "Stop the gateway ADDRESS from anchoring; its anchors so far stay valid.")


@chain.command("status")
@registry_option
@network_option
@json_option
@config_option
@data_dir_option
def status(registry, network, as_json, config_path, data_dir) -> None:
    """The chain as this gateway sees it: network, the node key's funds and what an anchor costs,
    the registry's view of this gateway, and the running gateway's anchoring."""
    from gateway.chain.keystore import KeystoreError, read_identity
    from gateway.cli.status import chain_lines
    from gateway.proofs import registry as registry_admin
    from gateway.proofs.anchorer import AnchorConfig

    config = get_config(config_path, data_dir)
    w3, net = _connect(config, network)
    try:
        gateway = read_identity(config.layout.node_key).address
    except KeystoreError as e:
        raise click.ClickException(f"{e} (`w3gate key new` makes the node key)") from None
    balance, price = int(w3.eth.get_balance(gateway)), int(w3.eth.gas_price)
    anchor_cost = 56_000 * price  # measured: 55,708 gas per anchor (bench/proofs.py)
    out = {"network": net.name, "rpc": net.rpc_url, "chain_id": w3.eth.chain_id, "block": w3.eth.block_number,
           "gateway": gateway, "did": f"did:io:{gateway.lower()}", "balance_wei": balance, "gas_price_wei": price,
           "anchor_cost_wei": anchor_cost, "anchors_affordable": balance // anchor_cost if anchor_cost else None,
           "max_anchor_cost_wei": AnchorConfig().anchor_gas * price, "registry": None, "anchoring": None}
    registry = registry or config.chain.registry
    if registry:
        try:
            out["registry"] = registry_admin.gateway_state(w3, registry, gateway)
        except W3gateError as e:
            out["registry"] = {"registry": registry, "error": str(e)}
    info = read_status(config.layout.status) or {}
    if pid_alive(info.get("pid")) and time.time() - info.get("time", 0) < 10:
        out["anchoring"] = info.get("chain")
    if as_json:
        return emit_json(out)
    click.echo(f"network    {net.name} ({net.rpc_url}), chain {out['chain_id']}, block {out['block']}")
    click.echo(f"node key   {gateway} ({out['did']})")
    click.echo(f"funds      {balance / 1e18:.6f}; an anchor costs about {anchor_cost / 1e18:.6f} at "
               f"{price / 1e9:g} gwei: {out['anchors_affordable']} anchors")
    state = out["registry"]
    if state is None:
        click.echo("registry   none set ([chain] registry; `w3gate chain deploy-registry` makes one)")
    elif "error" in state:
        click.echo(f"registry   {state['error']}")
    else:
        history = ", ".join(f"{h['event'].removeprefix('Gateway').lower()} in block {h['block']}"
                            for h in state["history"]) or "never added"
        click.echo(f"registry   {state['registry']} (owner {state['owner']}): this gateway is "
                   f"{'REGISTERED' if state['registered'] else 'NOT REGISTERED'} ({history}); "
                   f"next batch sequence {state['next_sequence']}")
    if out["anchoring"]:
        for line in chain_lines(out["anchoring"]):
            click.echo(line)
    else:
        click.echo("anchoring  the gateway is not running with [chain] enabled")


COMMANDS = [chain]
