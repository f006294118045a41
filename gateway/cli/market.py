"""``w3gate market``: device streams sold by contract (docs/market.md), one command per step of
each party.

    the gateway's operator   w3gate market deploy            # a DataMarket trusting [chain] registry
                             w3gate market vouch IMEI        # "this gateway serves IMEI, owned by …"
                             w3gate market status            # the purchases this gateway delivers
    the device's owner       w3gate market sell IMEI --price WEI --wallet OWNER.key
                             w3gate market withdraw --wallet OWNER.key
    the buyer                w3gate market keygen buyer.x25519
                             w3gate market buy IMEI --blocks N --endpoint mqtt://… --key-file … --wallet …
                             w3gate market receive ID --key-file … --endpoint mqtt://…
                             w3gate market refund ID --wallet …
                             w3gate market claim ID --proof P.json --received R.jsonl --wallet …

The operator signs with the node key (stop the gateway first: it sends with that key). Owners
and buyers sign with their own wallet: a V3 keystore (with ``--passphrase-file``) or a file
holding a hex private key. ``--rpc`` and ``--market`` default to ``[chain] network`` and
``[market] contract``.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click

from gateway.cli.chain import _connect, _owner, _owner_options
from gateway.cli.common import (
    config_option,
    data_dir_option,
    emit_json,
    get_config,
    json_option,
)
from gateway.errors import W3gateError

rpc_option = click.option("--rpc", "network",
                          help="JSON-RPC URL, iotex-mainnet or iotex-testnet (default: [chain] network).")
market_option = click.option("--market", "market_address", help="The DataMarket's address (default: [market] contract).")
wallet_options = [
    click.option("--wallet", type=click.Path(exists=True, dir_okay=False), required=True,
                 help="Your key: a V3 keystore, or a file holding a hex private key."),
    click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False),
                 help="The keystore's passphrase, first line (a prompt otherwise)."),
]


def _common(fn):
    for option in reversed([rpc_option, market_option, json_option, config_option, data_dir_option]):
        fn = option(fn)
    return fn


def _wallet_opts(fn):
    for option in reversed(wallet_options):
        fn = option(fn)
    return fn


def _wallet(path: str, passphrase_file: str | None):
    from eth_account import Account

    from gateway.chain.keystore import load_key, read_passphrase_file

    text = Path(path).read_text(errors="replace").strip()
    if text.startswith("{"):
        passphrase = read_passphrase_file(passphrase_file) if passphrase_file else click.prompt(
            "Passphrase", hide_input=True)
        return load_key(path, passphrase)
    try:
        return Account.from_key(text)
    except (ValueError, TypeError):
        raise click.ClickException(f"{path}: neither a V3 keystore nor a hex private key") from None


def _setup(network, market_address, config_path, data_dir, *, need_market: bool = True):
    config = get_config(config_path, data_dir)
    w3, _ = _connect(config, network)
    address = market_address or config.market.contract
    if need_market and not address:
        raise click.ClickException("no market: give --market or set [market] contract")
    return config, w3, address


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except W3gateError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def market() -> None:
    """Sell device streams by contract, buy them, receive and check what was bought."""


@market.command()
@click.option("--registry", help="The ProofRegistry whose gateways may vouch (default: [chain] registry).")
@click.option("--challenge-blocks", type=click.IntRange(0), default=17_280, show_default=True,
              help="Blocks after a settlement before the owner is paid (the buyer's time to claim).")
@click.option("--grace-blocks", type=click.IntRange(1), default=720, show_default=True,
              help="Blocks after a window for the gateway to settle, else the buyer is refunded.")
@_owner_options
@_common
def deploy(registry, challenge_blocks, grace_blocks, owner_keystore, passphrase_file, network, market_address,
           as_json, config_path, data_dir) -> None:
    """Deploy a DataMarket trusting the gateways of the proof registry."""
    from gateway.market import contract

    config, w3, _ = _setup(network, market_address, config_path, data_dir, need_market=False)
    registry = registry or config.chain.registry
    if not registry:
        raise click.ClickException("no registry: give --registry or set [chain] registry")
    signer = _owner(config, owner_keystore, passphrase_file)
    sent = _run(contract.deploy, w3, signer, registry, challenge_blocks=challenge_blocks, grace_blocks=grace_blocks)
    if as_json:
        return emit_json({"market": sent.contract, "registry": registry, "block": sent.block, "tx": sent.tx})
    click.echo(f"market  {sent.contract}, block {sent.block}, {sent.gas_used} gas; registry {registry}")
    click.echo(f'next: put  contract = "{sent.contract}"  in the [market] section of your w3gate.toml '
               "(or set W3GATE_MARKET_CONTRACT), then restart the gateway")


@market.command()
@click.argument("device")
@click.option("--owner", help="The owner's address (default: the owner the device confirmed to this gateway).")
@_owner_options
@_common
def vouch(device, owner, owner_keystore, passphrase_file, network, market_address, as_json, config_path,
          data_dir) -> None:
    """State on chain that this gateway serves DEVICE and who owns it (signed by the node key)."""
    from gateway.market import contract
    from gateway.verify.registry import STATUS_CONFIRMED, Registry

    config, w3, address = _setup(network, market_address, config_path, data_dir)
    known = Registry(config.layout.devices).get(device)  # a Pebble: its leaves carry its own address
    if owner is None:
        if known is None or not known.owner or known.status != STATUS_CONFIRMED:
            raise click.ClickException(f"{device} has no confirmed owner at this gateway: give --owner ADDRESS "
                                       "(you vouch for it: check it first)")
        owner = known.owner
    gateway = _owner(config, owner_keystore, passphrase_file)
    sent = _run(contract.vouch, w3, gateway, address, device, owner, known.address if known else None)
    if as_json:
        return emit_json({"device": device, "owner": owner, "gateway": gateway.address,
                          "signer": known.address if known else None, "tx": sent.tx, "block": sent.block})
    click.echo(f"{device}: owner {owner}, served by {gateway.address}"
               + (f", its readings signed by {known.address}" if known else
                  " (its readings are signed by this gateway: a withheld one cannot be proven on chain)")
               + f" (block {sent.block})")


@market.command()
@click.argument("device")
@click.option("--price", type=click.IntRange(0), required=True, help="Wei per block (0 takes it off sale).")
@_wallet_opts
@_common
def sell(device, price, wallet, passphrase_file, network, market_address, as_json, config_path, data_dir) -> None:
    """List DEVICE's stream at a price per block (signed by its vouched owner)."""
    from gateway.market import contract

    _, w3, address = _setup(network, market_address, config_path, data_dir)
    sent = _run(contract.list_stream, w3, _wallet(wallet, passphrase_file), address, device, price)
    if as_json:
        return emit_json({"device": device, "price_per_block": price, "tx": sent.tx, "block": sent.block})
    click.echo(f"{device}: {'for sale at ' + str(price) + ' wei per block' if price else 'off sale'} "
               f"(block {sent.block})")


@market.command()
@click.argument("file", type=click.Path(dir_okay=False))
def keygen(file) -> None:
    """Make the X25519 key your readings are sealed to (FILE, 0600); print its public half."""
    from gateway.market.seal import new_key_file, public_bytes

    key = _run(new_key_file, file)
    click.echo("0x" + public_bytes(key).hex())


@market.command()
@click.argument("device")
@click.option("--blocks", type=click.IntRange(1), required=True, help="How many blocks of readings to buy.")
@click.option("--endpoint", required=True, help="Your MQTT broker: mqtt[s]://[user:pass@]host[:port][/topic].")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Your X25519 key (w3gate market keygen).")
@_wallet_opts
@_common
def buy(device, blocks, endpoint, key_file, wallet, passphrase_file, network, market_address, as_json, config_path,
        data_dir) -> None:
    """Pay for BLOCKS blocks of DEVICE's readings, sealed to your key, delivered to your broker."""
    from gateway.market import contract
    from gateway.market.endpoint import parse_endpoint
    from gateway.market.seal import public_bytes, read_key_file

    _, w3, address = _setup(network, market_address, config_path, data_dir)
    where = _run(parse_endpoint, endpoint, 0)  # a URL the gateway would refuse is refused before paying
    key = public_bytes(_run(read_key_file, key_file))
    _open_mailbox(where, key)
    bought = _run(contract.buy, w3, _wallet(wallet, passphrase_file), address, device, blocks, key, endpoint)
    out = {"purchase": bought.id, "device": device, "blocks": [bought.start, bought.end], "paid_wei": bought.paid,
           "tx": bought.sent.tx, "market": address, "chain_id": w3.eth.chain_id}
    if as_json:
        return emit_json(out)
    click.echo(f"purchase {bought.id}: {device}, blocks {bought.start}..{bought.end - 1}, paid {bought.paid} wei")
    click.echo(f"receive: w3gate market receive {bought.id} --key-file {shlex.quote(key_file)} --endpoint "
               f"{shlex.quote(endpoint)} --rpc {shlex.quote(w3.provider.endpoint_uri)} --market {address}")


def _buyer_client(where, key: bytes):
    """The buyer's MQTT session on their broker: persistent and named after their key and topic,
    so their broker keeps what the gateway publishes while `receive` is not running."""
    import hashlib

    import paho.mqtt.client as mqtt

    name = hashlib.sha256(key + where.topic.encode()).hexdigest()[:20]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"w3gate-buyer-{name}", clean_session=False)
    if where.username is not None:
        client.username_pw_set(where.username, where.password)
    if where.tls:
        client.tls_set()
    return client


def _open_mailbox(where, key: bytes) -> None:
    """Subscribe the buyer's persistent session before paying: from then on their broker queues
    the readings, even those published before `w3gate market receive` starts."""
    import threading

    client, done = _buyer_client(where, key), threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(where.topic, qos=1)
    client.on_subscribe = lambda *a: done.set()
    try:
        client.connect(where.host, where.port, keepalive=30)
    except OSError as e:
        raise click.ClickException(f"your broker {where.display} cannot be reached ({e}): nothing was paid") from None
    client.loop_start()
    try:
        if not done.wait(10):
            raise click.ClickException(f"your broker {where.display} did not take the subscription: nothing was paid")
    finally:
        client.disconnect()
        client.loop_stop()


@market.command()
@click.argument("purchase_id", type=int)
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--endpoint", required=True, help="The broker URL you bought with.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many readings.")
@click.option("--timeout", type=float, default=0, help="Stop after this many seconds (0: when the window is over).")
@_common
def receive(purchase_id, key_file, endpoint, count, timeout, network, market_address, as_json, config_path,
            data_dir) -> None:
    """Receive a purchase's readings: open each, check it against its leaf, print it (JSON lines);
    then, as the gateway anchors them, each reading's Merkle proof, checked against the chain.

    Reading lines carry ``n``, the record's ``seq``, ``leaf`` and the record; proof lines carry
    ``n`` and ``proof``: "valid", or why not. The registry is the one the market trusts, the
    anchoring gateway the purchase's. Ends when the contract says the purchase is settled, at
    --count readings or at --timeout."""
    import threading

    from gateway.market import contract
    from gateway.market.delivery import DeliveryError, check_reading
    from gateway.market.endpoint import parse_endpoint
    from gateway.market.seal import SealError, open_message, public_bytes, read_key_file
    from gateway.proofs.verify import CannotTell, verify_proof

    _, w3, address = _setup(network, market_address, config_path, data_dir)
    key = _run(read_key_file, key_file)
    where = _run(parse_endpoint, endpoint, purchase_id)
    chain_id, rpc_url = w3.eth.chain_id, w3.provider.endpoint_uri
    state = _run(contract.purchase, w3, address, purchase_id)
    if state["state"] == "none":
        raise click.ClickException(f"there is no purchase {purchase_id} on market {address}")
    registry = contract.market(w3, address).functions.registry().call()
    leaves: dict[int, bytes] = {}  # the readings received, by n
    proofs: dict[int, str] = {}  # their proofs' verdicts, by n
    refused: dict[str, int] = {}
    lock = threading.Lock()

    def emit(line: dict, text: str) -> None:
        click.echo(json.dumps(line, separators=(",", ":")) if as_json else text)
        sys.stdout.flush()

    def on_reading(n: int, leaf: bytes, plaintext: bytes) -> None:
        r = check_reading(plaintext, leaf)
        if n in leaves or count and len(leaves) >= count:
            return  # a resend after the gateway restarted, or one more than asked for
        leaves[n] = leaf
        emit({"n": n, "seq": r["seq"], "device": r["device"], "leaf": "0x" + leaf.hex(),
              "received_ms": r["leaf_fields"]["received_ms"], "record": r["record"]},
             f"#{n} seq {r['seq']} {r['device']} at {r['leaf_fields']['received_ms']} ms leaf 0x{leaf.hex()[:16]}…")

    def on_proof(n: int, leaf: bytes, plaintext: bytes) -> None:
        if n in proofs or n not in leaves:
            return
        proof = None
        try:
            proof = json.loads(plaintext)
            if proof.get("leaf") != "0x" + leaves[n].hex() or leaf != leaves[n]:
                verdict = "INVALID (wrong_leaf): the proof is not of the reading it was sent for"
            else:
                checked = verify_proof(proof, rpc_url, registry, gateway=state["gateway"])
                verdict = "valid" if checked.ok else f"INVALID ({checked.reason}): {checked.detail}"
        except CannotTell as e:
            verdict = f"cannot tell ({e.reason}): {e.detail}"
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            verdict = f"INVALID (malformed): {e}"
        proofs[n] = verdict
        emit({"n": n, "proof": verdict, "root": proof.get("root") if isinstance(proof, dict) else None},
             f"#{n} proof {verdict}")

    def on_message(client, userdata, message) -> None:
        with lock:
            try:
                opened = open_message(key, message.payload, chain_id=chain_id, market=address, purchase=purchase_id)
                (on_reading if opened["kind"] == "reading" else on_proof)(opened["n"], opened["leaf"],
                                                                          opened["plaintext"])
            except (SealError, DeliveryError) as e:
                refused[e.reason] = refused.get(e.reason, 0) + 1

    client = _buyer_client(where, public_bytes(key))
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(where.topic, qos=1)
    client.connect(where.host, where.port)
    client.loop_start()
    started, last_check = time.monotonic(), 0.0
    try:
        while True:
            time.sleep(0.2)
            if count and len(leaves) >= count or timeout and time.monotonic() - started > timeout:
                break
            if time.monotonic() - last_check > 2:
                last_check = time.monotonic()
                if contract.purchase(w3, address, purchase_id)["state"] != "open":
                    time.sleep(1)  # the last messages were acknowledged before the settlement was sent
                    break
    finally:
        client.disconnect()
        client.loop_stop()
    settled = contract.purchase(w3, address, purchase_id)
    with lock:
        valid = sum(v == "valid" for v in proofs.values())
        summary = {"purchase": purchase_id, "received": len(leaves), "proven": valid,
                   "proofs_not_valid": len(proofs) - valid, "refused": refused, "state": settled["state"],
                   "settled_delivered": settled["delivered"], "delivery_root": settled["delivery_root"]}
    click.echo(json.dumps(summary) if as_json else
               f"{len(leaves)} reading(s) received, {valid} proven against the chain; purchase {settled['state']}"
               + (f", gateway says {settled['delivered']} delivered" if settled["state"] != "open" else "")
               + (f"; refused: {refused}" if refused else ""), err=not as_json)


def _simple(name: str, action, what: str):
    @market.command(name, help=f"Mark purchase PURCHASE_ID {what}.")
    @click.argument("purchase_id", type=int)
    @_wallet_opts
    @_common
    def command(purchase_id, wallet, passphrase_file, network, market_address, as_json, config_path, data_dir):
        _, w3, address = _setup(network, market_address, config_path, data_dir)
        sent = _run(action, w3, _wallet(wallet, passphrase_file), address, purchase_id)
        if as_json:
            return emit_json({"purchase": purchase_id, "tx": sent.tx, "block": sent.block})
        click.echo(f"purchase {purchase_id} {what} (block {sent.block})")
    return command


def _actions():
    from gateway.market import contract
    return contract


_simple("release", lambda *a: _actions().release(*a), "released to its owner (after the challenge period)")
_simple("refund", lambda *a: _actions().refund_unsettled(*a), "refunded to its buyer (never settled)")


@market.command()
@click.argument("purchase_id", type=int)
@click.option("--proof", "proof_file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The withheld reading's proof (`w3gate proof SEQ --json`, from whoever holds the record).")
@click.option("--received", type=click.Path(exists=True, dir_okay=False), required=True,
              help="What you received: the lines of `w3gate market receive ID --json`.")
@_wallet_opts
@_common
def claim(purchase_id, proof_file, received, wallet, passphrase_file, network, market_address, as_json, config_path,
          data_dir) -> None:
    """Prove that the gateway withheld a reading of your window: you are refunded.

    Your received readings must make the delivery root the gateway settled with (else it claims
    readings you never got, which nobody can prove); the reading must be anchored, inside the
    window, and not among them."""
    from gateway.market import contract
    from gateway.market.delivery import delivery_root, gap_proof

    _, w3, address = _setup(network, market_address, config_path, data_dir)
    proof = json.loads(Path(proof_file).read_text())
    leaves = []
    for line in Path(received).read_text().splitlines():
        entry = json.loads(line)
        if "leaf" in entry:
            leaves.append(bytes.fromhex(entry["leaf"].removeprefix("0x")))
    state = _run(contract.purchase, w3, address, purchase_id)
    if state["state"] != "settled":
        raise click.ClickException(f"purchase {purchase_id} is {state['state']}: only a settled one can be claimed")
    if "0x" + delivery_root(leaves).hex() != state["delivery_root"]:
        raise click.ClickException(f"the {len(leaves)} reading(s) you received do not make the settled delivery "
                                   f"root ({state['delivered']} claimed delivered): a reading claimed and not "
                                   "received cannot be proven on chain (docs/market.md)")
    leaf = bytes.fromhex(proof["leaf"].removeprefix("0x"))
    gap = _run(gap_proof, leaves, leaf)
    sent = _run(contract.claim_withheld, w3, _wallet(wallet, passphrase_file), address, purchase_id, proof, gap)
    if as_json:
        return emit_json({"purchase": purchase_id, "leaf": proof["leaf"], "tx": sent.tx, "block": sent.block})
    click.echo(f"purchase {purchase_id}: reading {proof['leaf']} proven withheld; refunded to its buyer "
               f"(block {sent.block}): `w3gate market withdraw`")


@market.command()
@_wallet_opts
@_common
def withdraw(wallet, passphrase_file, network, market_address, as_json, config_path, data_dir) -> None:
    """Pay out what was released or refunded to you."""
    from gateway.market import contract

    _, w3, address = _setup(network, market_address, config_path, data_dir)
    account = _wallet(wallet, passphrase_file)
    amount = contract.market(w3, address).functions.balanceOf(account.address).call()
    sent = _run(contract.withdraw, w3, account, address)
    if as_json:
        return emit_json({"account": account.address, "wei": amount, "tx": sent.tx})
    click.echo(f"{amount} wei paid out to {account.address} (block {sent.block})")


@market.command()
@json_option
@config_option
@data_dir_option
def status(as_json, config_path, data_dir) -> None:
    """The purchases this gateway delivers, from its journal."""
    from gateway.market.service import read_journal

    config = get_config(config_path, data_dir)
    journal = read_journal(config.layout)
    if as_json:
        return emit_json(journal)
    purchases = journal.get("purchases", {})
    if not purchases:
        click.echo("no purchases" + ("" if config.market.contract else " ([market] contract is not set)"))
    for pid, p in purchases.items():
        click.echo(f"purchase {pid}: {p['device']} blocks {p['start']}..{p['end'] - 1} {p['status']}"
                   + (f" ({p['problem']})" if p.get("problem") else ""))


COMMANDS = [market]
