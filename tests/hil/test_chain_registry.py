"""The proof registry on a real chain: the committed artifact deployed to anvil with web3.py,
transactions signed locally with the dev keys, roots built by gateway.proofs.merkle."""
from __future__ import annotations

import hashlib

import pytest
from eth_abi import decode
from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractCustomError

from gateway.proofs import merkle
from gateway.proofs.contract import artifact

ARTIFACT = artifact()  # as the gateway ships it
BATCH = 1000
FIRST_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def synthetic_records(n: int, *, start_ms: int = FIRST_MS) -> list[dict]:
    """Records as the batcher will see them: device, signature, payload digest, receive time."""
    return [{"device": keccak(b"device %d" % (i % 50))[:20],
             "signature": hashlib.sha512(b"signature %d" % i).digest(),
             "payload_sha256": hashlib.sha256(b"reading %d" % i).digest(),
             "received_ms": start_ms + 37 * i} for i in range(n)]


def leaves_of(records: list[dict]) -> list[bytes]:
    return [merkle.leaf(**r) for r in records]


class Chain:
    """web3.py on anvil, with locally signed transactions as the gateway will send them."""

    def __init__(self, anvil) -> None:
        self.w3 = Web3(Web3.HTTPProvider(anvil.url))
        self.owner, self.gateway, self.other, self.stranger = (Account.from_key(k) for k in anvil.keys[:4])
        self.registry = None

    def send(self, account, call, **tx):
        """Build (gas estimated unless given), sign, send, wait: the receipt."""
        built = call.build_transaction({"from": account.address, "nonce": self.w3.eth.get_transaction_count(account.address),
                                        "chainId": self.w3.eth.chain_id, **tx})
        signed = account.sign_transaction(built)
        return self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(signed.raw_transaction), timeout=10)

    def deploy(self):
        factory = self.w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
        receipt = self.send(self.owner, factory.constructor())
        assert receipt.status == 1
        self.registry = self.w3.eth.contract(address=receipt.contractAddress, abi=ARTIFACT["abi"])
        return self.registry

    def anchor(self, account, root: bytes, sequence: int, records: list[dict], **tx):
        times = [r["received_ms"] for r in records]
        return self.send(account, self.registry.functions.anchor(root, sequence, len(records), min(times), max(times)), **tx)

    def anchor_of(self, root: bytes) -> tuple:
        return tuple(self.registry.functions.anchorOf(root).call())


def custom_error(exc: ContractCustomError, signature: str, *types: str) -> tuple:
    """The arguments of the custom error `signature` carried by a revert; fails on any other error."""
    data = bytes.fromhex(exc.data.removeprefix("0x")) if isinstance(exc.data, str) else bytes(exc.data)
    assert data[:4] == keccak(text=signature)[:4], f"reverted with {data.hex()}, not {signature}"
    return decode(list(types), data[4:])


@pytest.fixture
def chain(anvil) -> Chain:
    """A fresh registry owned by dev account 0, with dev account 1 registered as a gateway."""
    c = Chain(anvil)
    c.deploy()
    receipt = c.send(c.owner, c.registry.functions.addGateway(c.gateway.address))
    (added,) = c.registry.events.GatewayAdded().process_receipt(receipt)
    assert added.args.gateway == c.gateway.address and added.args.id == 1
    return c


def test_a_registered_gateway_anchors_a_batch_and_any_record_proves_against_the_chain(chain):
    records = synthetic_records(BATCH)
    leaves = leaves_of(records)
    root = merkle.root(leaves)

    receipt = chain.anchor(chain.gateway, root, 0, records)
    assert receipt.status == 1
    print(f"\nanchor of {BATCH} records: {receipt.gasUsed} gas, {receipt.gasUsed / BATCH:.1f} gas per record")
    assert receipt.gasUsed <= 100 * BATCH  # the target at the default batch size

    (event,) = chain.registry.events.Anchored().process_receipt(receipt)
    assert dict(event.args) == {"gateway": chain.gateway.address, "root": root, "sequence": 0, "count": BATCH,
                                "firstTime": FIRST_MS, "lastTime": FIRST_MS + 37 * (BATCH - 1)}
    block = chain.w3.eth.get_block(receipt.blockNumber)
    assert chain.anchor_of(root) == (chain.gateway.address, 0, BATCH, FIRST_MS, FIRST_MS + 37 * (BATCH - 1),
                                     block.timestamp)
    assert chain.registry.functions.nextSequence(chain.gateway.address).call() == 1

    # A verifier trusts only the chain: the root and the record count come from anchorOf.
    gateway, _, count, _, _, _ = chain.anchor_of(root)
    assert gateway == chain.gateway.address
    for index in (0, 617, BATCH - 1):
        assert merkle.verify(merkle.leaf(**records[index]), index, merkle.proof(leaves, index), root, count)

    tampered = dict(records[617], payload_sha256=hashlib.sha256(b"reading 618").digest())
    assert not merkle.verify(merkle.leaf(**tampered), 617, merkle.proof(leaves, 617), root, count)
    assert chain.anchor_of(merkle.root(leaves_of([tampered]))) == ("0x" + "00" * 20, 0, 0, 0, 0, 0)


def test_an_unregistered_or_removed_account_cannot_anchor(chain):
    records = synthetic_records(10)
    root = merkle.root(leaves_of(records))
    with pytest.raises(ContractCustomError) as stranger:
        chain.anchor(chain.stranger, root, 0, records)
    assert custom_error(stranger.value, "NotGateway(address)", "address") == (chain.stranger.address.lower(),)

    chain.send(chain.owner, chain.registry.functions.removeGateway(chain.gateway.address))
    assert not chain.registry.functions.isGateway(chain.gateway.address).call()
    with pytest.raises(ContractCustomError) as removed:
        chain.anchor(chain.gateway, root, 0, records)
    custom_error(removed.value, "NotGateway(address)", "address")
    assert chain.anchor_of(root)[0] == "0x" + "00" * 20


def test_only_the_owner_manages_gateways(chain):
    with pytest.raises(ContractCustomError) as e:
        chain.send(chain.gateway, chain.registry.functions.addGateway(chain.stranger.address))
    custom_error(e.value, "NotOwner()")
    assert not chain.registry.functions.isGateway(chain.stranger.address).call()


def test_anchoring_the_same_root_again_is_a_no_op(chain):
    records = synthetic_records(100)
    root = merkle.root(leaves_of(records))
    first = chain.anchor(chain.gateway, root, 0, records)
    stored = chain.anchor_of(root)

    # A gateway resubmitting a batch that did land (whatever sequence it now thinks it is at),
    # and a second gateway that saw the same records: neither fails, neither changes anything.
    chain.send(chain.owner, chain.registry.functions.addGateway(chain.other.address))
    for account, sequence in ((chain.gateway, 0), (chain.gateway, 1), (chain.other, 0)):
        again = chain.anchor(account, root, sequence, records)
        assert again.status == 1 and again.logs == []
    assert again.gasUsed < first.gasUsed  # nothing stored
    assert chain.anchor_of(root) == stored
    assert chain.registry.functions.nextSequence(chain.gateway.address).call() == 1
    assert chain.registry.functions.nextSequence(chain.other.address).call() == 0


def test_a_batch_out_of_sequence_reverts_so_none_is_skipped_or_sent_twice(chain):
    batches = [synthetic_records(20, start_ms=FIRST_MS + 1000 * b) for b in range(3)]
    roots = [merkle.root(leaves_of(b)) for b in batches]

    with pytest.raises(ContractCustomError) as skipped:
        chain.anchor(chain.gateway, roots[1], 1, batches[1])
    assert custom_error(skipped.value, "UnexpectedSequence(uint64,uint64)", "uint64", "uint64") == (0, 1)

    assert chain.anchor(chain.gateway, roots[0], 0, batches[0]).status == 1
    with pytest.raises(ContractCustomError) as repeated:
        chain.anchor(chain.gateway, roots[1], 0, batches[1])
    assert custom_error(repeated.value, "UnexpectedSequence(uint64,uint64)", "uint64", "uint64") == (1, 0)

    # Mined without estimation, the revert still stores nothing.
    mined = chain.anchor(chain.gateway, roots[2], 2, batches[2], gas=200_000)
    assert mined.status == 0
    assert chain.anchor_of(roots[2])[0] == "0x" + "00" * 20

    # After a restart the gateway asks the chain which batch is next, and sends exactly that one.
    restarted = Web3(Web3.HTTPProvider(chain.w3.provider.endpoint_uri)).eth.contract(
        address=chain.registry.address, abi=ARTIFACT["abi"])
    next_sequence = restarted.functions.nextSequence(chain.gateway.address).call()
    assert next_sequence == 1
    assert chain.anchor(chain.gateway, roots[next_sequence], next_sequence, batches[next_sequence]).status == 1
    assert chain.registry.functions.nextSequence(chain.gateway.address).call() == 2


def test_a_re_added_gateway_keeps_its_sequence(chain):
    records = synthetic_records(5)
    chain.anchor(chain.gateway, merkle.root(leaves_of(records)), 0, records)
    chain.send(chain.owner, chain.registry.functions.removeGateway(chain.gateway.address))
    chain.send(chain.owner, chain.registry.functions.addGateway(chain.gateway.address))
    assert chain.registry.functions.isGateway(chain.gateway.address).call()
    assert chain.registry.functions.nextSequence(chain.gateway.address).call() == 1
    assert chain.registry.functions.gatewayCount().call() == 1


def test_an_empty_batch_or_inverted_time_range_is_refused(chain):
    root = merkle.root(leaves_of(synthetic_records(3)))
    with pytest.raises(ContractCustomError) as empty:
        chain.send(chain.gateway, chain.registry.functions.anchor(root, 0, 0, FIRST_MS, FIRST_MS))
    custom_error(empty.value, "EmptyBatch()")
    with pytest.raises(ContractCustomError) as inverted:
        chain.send(chain.gateway, chain.registry.functions.anchor(root, 0, 3, FIRST_MS + 1, FIRST_MS))
    custom_error(inverted.value, "BadTimeRange()")
