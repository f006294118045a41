"""`w3gate chain` on a real chain (anvil): one command deploys the proof registry and registers
the gateway, the owner adds and removes gateways, and `chain status` says what the registry and
the node key's funds look like, as a user setting up a testnet gateway runs them."""
from __future__ import annotations

from eth_account import Account

from gateway.chain.keystore import save_key
from tests.support.gateway import cli, cli_json


def _node(tmp_path, anvil, key_index: int = 1):
    """A data directory whose node key is anvil's dev key ``key_index``, and its passphrase file."""
    data = tmp_path / "data"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    key_file = tmp_path / "key.hex"
    key_file.write_text(anvil.keys[key_index])
    identity = cli_json("key", "import", str(key_file), "--passphrase-file", str(passphrase), data_dir=data)
    return data, passphrase, identity["address"]


def test_one_command_deploys_the_registry_with_this_gateway_registered(tmp_path, anvil):
    data, passphrase, address = _node(tmp_path, anvil)
    out = cli_json("chain", "deploy-registry", "--network", anvil.url, "--passphrase-file", str(passphrase),
                   data_dir=data)
    assert out["owner"] == address and out["chain_id"] == 31337 and out["gateway_added"]["gateway"] == address
    status = cli_json("chain", "status", "--network", anvil.url, "--registry", out["registry"], data_dir=data)
    assert status["gateway"] == address and status["balance_wei"] > 0 and status["anchors_affordable"] > 1000
    state = status["registry"]
    assert state["registered"] and state["owner"] == address and state["next_sequence"] == 0
    assert [h["event"] for h in state["history"]] == ["GatewayAdded"]
    text = cli("chain", "status", "--network", anvil.url, "--registry", out["registry"], data_dir=data).stdout
    assert f"this gateway is REGISTERED (added in block {state['history'][0]['block']})" in text, text


def test_the_owner_adds_and_removes_gateways_and_no_one_else_can(tmp_path, anvil):
    data, passphrase, owner = _node(tmp_path, anvil)
    registry = cli_json("chain", "deploy-registry", "--no-add", "--network", anvil.url, "--passphrase-file",
                        str(passphrase), data_dir=data)["registry"]
    other = Account.create()
    added = cli_json("chain", "add-gateway", f"did:io:{other.address.lower()}", "--registry", registry,
                     "--network", anvil.url, "--passphrase-file", str(passphrase), data_dir=data)
    assert added["gateway"] == other.address
    cli("chain", "remove-gateway", other.address, "--registry", registry, "--network", anvil.url,
        "--passphrase-file", str(passphrase), data_dir=data)
    stranger = tmp_path / "stranger.json"
    save_key(stranger, anvil.keys[3], "a stranger's passphrase", iterations=2)
    (tmp_path / "pw").write_text("a stranger's passphrase\n")
    refused = cli("chain", "add-gateway", other.address, "--registry", registry, "--network", anvil.url,
                  "--owner-keystore", str(stranger), "--passphrase-file", str(tmp_path / "pw"), data_dir=data,
                  check=False)
    assert refused.returncode == 1 and "refused by the contract: NotOwner" in refused.stderr, refused.stderr
    nowhere = Account.create().address
    missing = cli("chain", "add-gateway", other.address, "--registry", nowhere, "--network", anvil.url,
                  "--passphrase-file", str(passphrase), data_dir=data, check=False)
    assert missing.returncode == 1 and f"there is no contract at {nowhere}" in missing.stderr
