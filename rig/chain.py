"""A local development chain: anvil from npm `@foundry-rs/anvil` (see package.json) on a loopback
port of its own, in its own process group so stopping it leaves nothing behind, and the proof
registry deployed on it. The tests, the benches and the demo use it; a real gateway talks to a
real chain (``[chain] network``)."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hardware.process import stop_group
from rig.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"
CHAIN_ID = 31337

# The funded dev accounts anvil derives from the standard test mnemonic
# ("test test test test test test test test test test test junk"), in eth_accounts order.
# Well known and worthless: never use them on a real network. start_anvil checks them.
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)
DEV_ADDRESSES = (
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
)


class AnvilError(RuntimeError):
    pass


def rpc(url: str, method: str, *params: object, timeout: float = 5.0) -> object:
    """One JSON-RPC call without web3: enough to see that the chain is up."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise AnvilError(f"{method}: {reply['error']}")
    return reply["result"]


@dataclass
class Anvil:
    port: int
    proc: subprocess.Popen
    log: Path
    host: str = "127.0.0.1"
    keys: tuple[str, ...] = DEV_KEYS
    addresses: tuple[str, ...] = DEV_ADDRESSES

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def rpc(self, method: str, *params: object) -> object:
        return rpc(self.url, method, *params)

    def stop(self) -> None:
        stop_group(self.proc)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float, chain_id: int = CHAIN_ID) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return int(rpc(url, "eth_chainId", timeout=0.5), 16) == chain_id
        except (OSError, urllib.error.URLError):
            time.sleep(0.05)
    return False


def start_anvil(workdir: Path, *extra: str, timeout: float = 20.0) -> Anvil:
    """Start anvil on a random loopback port (retrying a lost port race) and wait for eth_chainId."""
    if not ANVIL.exists():
        raise AnvilError(f"{ANVIL} is missing: run `npm ci` (./dev.sh setup does)")
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = free_port()
        log = workdir / f"anvil-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent", *extra],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        chain = Anvil(port, proc, log)
        chain_id = int(extra[extra.index("--chain-id") + 1]) if "--chain-id" in extra else CHAIN_ID
        if _wait_ready(chain.url, proc, timeout, chain_id):
            accounts = chain.rpc("eth_accounts")
            if [a.lower() for a in accounts[:len(DEV_ADDRESSES)]] != [a.lower() for a in DEV_ADDRESSES]:
                chain.stop()
                raise AnvilError(f"anvil's dev accounts are not the well-known ones: {accounts}")
            return chain
        stop_group(proc)
    raise AnvilError(f"anvil did not start; see {log}")


def deploy_registry(url: str, owner_key: str, gateways: list[str]) -> str:
    """Deploy the ProofRegistry artifact with ``owner_key`` and register ``gateways``; its address."""
    from eth_account import Account
    from web3 import Web3

    from gateway.proofs import registry

    w3, owner = Web3(Web3.HTTPProvider(url)), Account.from_key(owner_key)
    address = registry.deploy(w3, owner).contract
    for gateway in gateways:
        registry.add_gateway(w3, owner, address, gateway)
    return address
