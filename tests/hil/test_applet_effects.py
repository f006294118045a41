"""An applet's effects outside its state happen once, and only for events that are kept: on a
real `w3gate run` with [chain] on anvil, a transaction asked by an event that fails never reaches
the chain, and a gateway killed around an event's commit neither loses nor repeats its
transaction once it starts again."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest
from eth_account import Account
from web3 import Web3

from gateway.chain import txlog
from gateway.layout import DataDir
from tests.support.gateway import chain_gateway, cli, cli_json, post_event
from tests.support.wat import assemble


def _project(tmp_path, gw, built_applets) -> str:
    """Project "fx": the hand-written probe (send then trap, send then wait) and the AssemblyScript
    probe (send), with a publisher token."""
    probe = tmp_path / "probe.wasm"
    probe.write_bytes(assemble("probe", tmp_path))
    (tmp_path / "fx.toml").write_text(
        f'name = "fx"\n[[applets]]\nname = "wat"\nwasm = "{probe}"\n'
        f'[[applets]]\nname = "as"\nwasm = "{built_applets / "abi-probe.wasm"}"\n'
        '[[strategies]]\nevent = "FAIL"\napplet = "wat"\nhandler = "send_tx_then_trap"\n'
        '[[strategies]]\nevent = "WAIT"\napplet = "wat"\nhandler = "send_tx_then_wait"\n'
        '[[strategies]]\nevent = "TX"\napplet = "as"\nhandler = "send_tx"\n')
    cli("project", "deploy", str(tmp_path / "fx.toml"), data_dir=gw.data_dir)
    return cli_json("publisher", "add", "fx", "tester", data_dir=gw.data_dir)["token"]


def _txs(gw) -> list[dict]:
    return cli_json("project", "txs", "fx", data_dir=gw.data_dir)


def _wait_txs(gw, predicate, what: str, timeout: float = 20) -> list[dict]:
    """The project's transactions once ``predicate`` holds (read from its log: the CLI's figures,
    without a process start per look)."""
    path = DataDir(gw.data_dir).project("fx").txs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = txlog.read(path)
        if predicate(rows):
            return _txs(gw)
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(_txs(gw))}")


def _wait_outbox(gw, timeout: float = 20) -> None:
    """Until the project's state holds a committed effect (its worker finished the event)."""
    path = DataDir(gw.data_dir).project("fx").state
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            if db.execute("SELECT count(*) FROM w3gate_outbox").fetchone()[0]:
                return
        time.sleep(0.05)
    raise AssertionError("the worker never committed the event's effect")


@contextmanager
def _running(tmp_path, mosquitto, anvil, built_applets, **settings):
    """A running gateway with [chain] on anvil (no anchoring) and project "fx": (gateway, event
    API URL, token, web3, the node key's address, a fresh receiver address)."""
    gw, _, identity, _ = chain_gateway(tmp_path, mosquitto, anvil, anchoring=False, **settings)
    token = _project(tmp_path, gw, built_applets)
    gw.start()
    try:
        url = gw.wait_for(lambda s: (s.get("api") or {}).get("url"), what="event API")["api"]["url"]
        yield gw, url, token, Web3(Web3.HTTPProvider(anvil.url)), identity["address"], Account.create().address
    finally:
        gw.stop()


def test_a_transaction_asked_by_an_event_that_fails_never_reaches_the_chain(tmp_path, mosquitto, anvil,
                                                                          built_applets):
    with _running(tmp_path, mosquitto, anvil, built_applets) as (gw, url, token, w3, node, receiver):
        failed = post_event(url, token, "fx", "FAIL", {"to": receiver, "value": "5", "data": ""})
        assert failed["code"] == -1 and "trap" in failed["error"]
        kept = post_event(url, token, "fx", "TX", {"to": receiver, "value": "7", "data": ""})
        assert kept["code"] == 0, kept
        w3.eth.wait_for_transaction_receipt(kept["returnValue"], timeout=10)
        rows = _wait_txs(gw, lambda r: [x.get("status") for x in r] == ["voided", "confirmed"],
                         "the voided and the confirmed transaction")
        assert rows[1]["hash"] == kept["returnValue"] and rows[1]["block"] >= 1
        assert w3.eth.get_balance(receiver) == 7  # the failed event's 5 wei never left
        assert w3.eth.get_transaction_count(node) == 1  # its nonce was given back


@pytest.mark.parametrize("killed", ["the gateway, after the worker committed", "the whole service, mid-event"])
def test_a_gateway_killed_around_the_commit_neither_loses_nor_repeats_a_transaction(
        tmp_path, mosquitto, anvil, built_applets, killed):
    with _running(tmp_path, mosquitto, anvil, built_applets, applets__time_limit_s=10.0) as (
            gw, url, token, w3, node, receiver):
        asking = threading.Thread(target=lambda: _ignore_errors(post_event, url, token, "fx", "WAIT",
                                                                {"to": receiver, "value": "9", "data": ""}))
        asking.start()
        _wait_txs(gw, lambda r: [x.get("status") for x in r] == ["held"], "the held transaction", timeout=10)
        if killed.startswith("the gateway"):
            os.kill(gw.proc.pid, signal.SIGKILL)  # its worker ends the event, commits, and finds no one
            gw.proc.wait()
            _wait_outbox(gw)
        gw.kill()  # the process group: the worker too, if it is still there
        asking.join(timeout=20)
        assert w3.eth.get_transaction_count(node) == 0  # held: never broadcast
        gw.start()
        if killed.startswith("the gateway"):  # committed: sent once now
            rows = _wait_txs(gw, lambda r: [x.get("status") for x in r] == ["confirmed"], "the confirmed transaction")
            assert w3.eth.get_balance(receiver) == 9
        else:  # never committed: voided at the start, nothing sent
            rows = _wait_txs(gw, lambda r: [x.get("status") for x in r] == ["voided"], "the voided transaction")
            assert w3.eth.get_balance(receiver) == 0
        gw.stop()
        gw.start()  # and a second restart does nothing more
        time.sleep(1.5)
        assert _txs(gw) == rows
        assert w3.eth.get_transaction_count(node) == (1 if killed.startswith("the gateway") else 0)


def _ignore_errors(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:  # the gateway was killed while answering
        pass
