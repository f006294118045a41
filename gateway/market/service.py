"""The running gateway's side of the market: follow the purchases of the streams it serves,
deliver each one's readings sealed to its buyer, and settle it on chain (docs/market.md).

Each poll:

1. *Follow* (chain thread): new ``Purchased`` logs naming this gateway join the journal
   (``market/journal.json``); for every open purchase, how far the chain has reached into its
   window and that block's timestamp.
2. *Deliver* (event loop; store reads on the writer thread): the device's records after the
   purchase's cursor are decided in seq order (deliver, outside the window, or not yet
   decidable), delivered ones are appended to the purchase's delivery log, synced, then sealed
   and published to the buyer's broker. The cursor is saved once the broker acknowledged them,
   so after a crash the unacknowledged tail is published again (the buyer drops repeats by
   counter) and nothing is sent twice under two counters.
3. *Settle* (chain thread): once the window's last block is known, every reading up to it has
   been decided and the buyer's broker acknowledged them, the settlement (count and sorted-tree
   root of the delivered leaves) goes out through the node key's sender; it is done when the
   contract says so.

Why the gateway never waits on a buyer: each purchase has its own publisher thread and a cap on
unacknowledged messages; a buyer whose broker is down gets its readings when it is back, within
the window's grace, and a purchase whose endpoint is refused settles with what was delivered.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.codec.record import received_ms
from gateway.errors import W3gateError
from gateway.layout import DataDir
from gateway.market import contract
from gateway.market.delivery import DeliveryLog, Window, delivery_root, reading
from gateway.market.endpoint import EndpointError, Publisher, parse_endpoint, resolve
from gateway.market.seal import Sealer, SealError, ephemeral_key
from gateway.proofs.leaf import addresses_from
from gateway.storage import atomic_write, private_dir, read_json

log = logging.getLogger("w3gate.market")

FIRST_LOOKBACK_BLOCKS = 10_000  # a new journal starts this far back (purchases made just before)
MAX_LOG_RANGE = 5_000  # blocks per eth_getLogs
SETTLE_MARGIN_MS = 3_000  # after a window's last second, for records still being committed
READ_LIMIT = 2_000  # records per store read
RESOLVE_RETRY_S = 60.0
PROOF_WAIT_S = 600.0  # after a window, how long settlement waits for its readings' anchors
FINAL = ("settled", "refunded", "paid")
KEEP_FINAL = 1_000  # finished purchases the journal remembers


class MarketService:
    def __init__(self, chain, market_config, layout: DataDir, store, registry, run_on_writer: Callable,
                 prove: Callable[[int], Awaitable[dict]] | None = None) -> None:
        self.chain = chain
        self.address = market_config.contract
        self.allow_private = market_config.allow_private_endpoints
        self.max_purchases = market_config.max_purchases
        self.dir = private_dir(layout.market)
        self.journal_path = self.dir / "journal.json"
        self.journal = read_json(self.journal_path) or {"next_block": None, "purchases": {}}
        self._store, self._run = store, run_on_writer
        self._address_of = addresses_from(registry)
        self.interval_s = chain.interval_s
        self.windows: dict[str, Window] = {}
        self.publishers: dict[str, Publisher] = {}
        self.sealers: dict[str, Sealer] = {}
        self.logs: dict[str, DeliveryLog] = {}
        self._retry_at: dict[str, float] = {}
        self.trouble: str | None = None  # why the market is not followed now (chain down...)
        self._cursor: dict[str, int] = {}  # decided up to this seq (saved once acknowledged)
        self._resend: dict[str, list[tuple[int, int, bytes]]] = {}  # logged, maybe never acknowledged
        self._decided: dict[str, bool] = {}  # every reading of the closed window decided, last round
        self._prove = prove  # a record's proof file, once anchored (None: no anchoring, no proofs)
        self._proved: dict[str, int] = {}  # delivery log entries whose proof was published

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info("market %s: delivering purchases of the streams this gateway serves", self.address)
        try:
            while not stop.is_set():
                try:
                    await self.chain.call(self._follow)
                    self.trouble = None
                except Exception as e:  # noqa: BLE001 - the chain being down must not stop delivery
                    self._note_trouble(f"following the market: {e}")
                await self._deliver()
                try:
                    await self.chain.call(self._settle)
                except Exception as e:  # noqa: BLE001
                    self._note_trouble(f"settling: {e}")
                try:
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                except TimeoutError:
                    pass
        finally:
            for publisher in self.publishers.values():
                publisher.close()
            self._save()

    def _note_trouble(self, what: str) -> None:
        if self.trouble != what:
            log.warning("market: %s", what)
        self.trouble = what

    def _save(self) -> None:
        for pid, cursor in self._cursor.items():
            if pid in self.journal["purchases"]:
                self.journal["purchases"][pid]["cursor"] = cursor
        for pid, proved in self._proved.items():
            if pid in self.journal["purchases"]:
                self.journal["purchases"][pid]["proved"] = proved
        atomic_write(self.journal_path, json.dumps(self.journal, indent=1).encode())

    # -- 1. follow (chain thread) ----------------------------------------------------------------

    def _follow(self) -> None:
        w3, me = self.chain.w3, self.chain.sender.address
        head = int(w3.eth.block_number)
        start = self.journal["next_block"]
        if start is None:
            start = max(0, head - FIRST_LOOKBACK_BLOCKS)
        changed = False
        while start <= head:
            end = min(head, start + MAX_LOG_RANGE - 1)
            for p in contract.purchased_logs(w3, self.address, me, start, end):
                pid = str(p["id"])
                if pid not in self.journal["purchases"]:
                    p.update(start_time=int(w3.eth.get_block(p["start"])["timestamp"]), status="open", cursor=0,
                             problem=None, settle_tx=None)
                    self.journal["purchases"][pid] = p
                    log.info("purchase %s: %s, blocks %d..%d, to %s", pid, p["device"], p["start"], p["end"] - 1,
                             _display(p["endpoint"], p["id"]))
            start = end + 1
            changed = True
        self.journal["next_block"] = start
        times: dict[int, int] = {}
        for pid, p in self.journal["purchases"].items():
            if p["status"] != "open":
                continue
            reached = min(head, p["end"] - 1)
            if reached not in times:
                times[reached] = int(w3.eth.get_block(reached)["timestamp"])
            self.windows[pid] = Window.at(p["start"], p["end"], p["start_time"], reached, times[reached])
        if changed:
            self._save()

    # -- 2. deliver (event loop) -----------------------------------------------------------------

    async def _deliver(self) -> None:
        active = [pid for pid, p in self.journal["purchases"].items() if p["status"] == "open" and pid in self.windows]
        for pid in active:
            if pid not in self.publishers and len(self.publishers) < self.max_purchases:
                await self._open(pid)
        serving = [pid for pid in active if pid in self.publishers and self.publishers[pid].connected]
        if not serving:
            return
        devices = {self.journal["purchases"][pid]["device"] for pid in serving}
        after = min(self._cursor_of(pid) for pid in serving)
        docs, scanned, anchored = await self._run(self._read, devices, after)
        now_ms = int(time.time() * 1000)
        for pid in serving:
            await self._deliver_one(pid, docs, scanned, full=len(docs) >= READ_LIMIT, now_ms=now_ms)
            proved = await self._publish_proofs(pid, anchored)
            self._maybe_due(pid, proved, now_ms)

    def _read(self, devices: set[str], after: int) -> tuple[list[dict], int, int]:
        """The purchased devices' records after ``after``, oldest first, the seq the read covered
        (records of other devices up to there need no second look) and how far records are anchored."""
        stats = self._store.stats()
        scanned, out = stats["last_seq"], []
        for doc in self._store.iter_records(newest_first=False, after_seq=after):
            if doc["seq"] > scanned:
                break
            if doc["device"] in devices:
                out.append(doc)
                if len(out) >= READ_LIMIT:
                    return out, doc["seq"], stats["anchored_upto"]
        return out, scanned, stats["anchored_upto"]

    def _cursor_of(self, pid: str) -> int:
        if pid not in self._cursor:
            p, delivered = self.journal["purchases"][pid], self.logs[pid].last_seq
            self._cursor[pid] = max(p["cursor"], delivered or 0)
        return self._cursor[pid]

    async def _open(self, pid: str) -> None:
        """The purchase's delivery log, sealer and publisher; a refused endpoint is noted for good."""
        p = self.journal["purchases"][pid]
        if time.monotonic() < self._retry_at.get(pid, 0):
            return
        self.logs.setdefault(pid, DeliveryLog(self.dir / f"{pid}.log"))
        try:
            endpoint = parse_endpoint(p["endpoint"], int(pid))
            secret = self.chain.sender.account.key
            self.sealers[pid] = Sealer(ephemeral_key(bytes(secret), self.chain.sender.chain_id, self.address, int(pid)),
                                       bytes.fromhex(p["key"]), self.chain.sender.chain_id, self.address, int(pid))
            address = await asyncio.to_thread(resolve, endpoint, allow_private=self.allow_private)
        except (EndpointError, SealError) as e:
            if e.reason == "unreachable":
                self._retry_at[pid] = time.monotonic() + RESOLVE_RETRY_S
            else:
                p["status"], p["problem"] = "undeliverable", str(e)  # settled with nothing delivered
                log.warning("purchase %s cannot be delivered: %s", pid, e)
                self._save()
            return
        self.publishers[pid] = Publisher(endpoint, address, f"w3gate-market-{pid}")
        # what was logged but maybe never acknowledged (a crash) goes out again, under its counter
        self._resend[pid] = [(n, seq, leaf) for n, (seq, leaf) in enumerate(self.logs[pid].entries) if seq > p["cursor"]]

    async def _deliver_one(self, pid: str, docs: list[dict], scanned: int, *, full: bool, now_ms: int) -> None:
        p, window, publisher, dlog = (self.journal["purchases"][pid], self.windows[pid], self.publishers[pid],
                                      self.logs[pid])
        resend = self._resend.pop(pid, [])
        if resend:
            by_seq = {d["seq"]: d for d in await self._run(self._get_many, [seq for _, seq, _ in resend])}
            for n, seq, leaf in resend:
                doc = by_seq.get(seq)
                if doc is not None:
                    publisher.publish(self.sealers[pid].seal(n, leaf, reading(doc, self._address_of(doc))[1]))
        cursor, room, fresh, undecided = self._cursor_of(pid), publisher.room, [], False
        for doc in docs:
            if doc["seq"] <= cursor or doc["device"] != p["device"]:
                continue
            verdict = window.decide(received_ms(doc["rx"]))
            if verdict == "deliver" and "payload_error" in doc:  # encrypted at rest and it does not open
                log.warning("purchase %s: record %d not delivered, its payload is unreadable (%s)", pid, doc["seq"],
                            doc["payload_error"])
                verdict = "skip"
            if verdict is None:
                undecided = True
                break
            if verdict == "deliver":
                if len(fresh) >= room:
                    undecided = True
                    break
                fresh.append((doc, *reading(doc, self._address_of(doc))))
            cursor = doc["seq"]
        if not undecided:
            cursor = max(cursor, scanned)  # every record up to there is decided, this device's and others'
        if fresh:
            first = len(dlog.entries)
            await asyncio.to_thread(dlog.append, [(doc["seq"], leaf) for doc, leaf, _ in fresh])
            for n, (doc, leaf, plaintext) in enumerate(fresh, start=first):
                publisher.publish(self.sealers[pid].seal(n, leaf, plaintext))
        self._cursor[pid] = cursor
        self._decided[pid] = window.closed and not undecided and not full
        if publisher.idle and p["cursor"] != cursor:
            self._save()

    async def _publish_proofs(self, pid: str, anchored: int) -> bool:
        """Each delivered reading's Merkle proof, once its record is anchored, in delivery order;
        whether every delivered reading has had its proof sent."""
        p, dlog, publisher = self.journal["purchases"][pid], self.logs[pid], self.publishers[pid]
        if self._prove is None:
            return True
        proved = self._proved.setdefault(pid, p.get("proved", 0))
        room = publisher.room
        while proved < len(dlog.entries) and room > 0:
            seq, leaf = dlog.entries[proved]
            if seq > anchored:
                break
            try:
                proof = await self._prove(seq)
            except W3gateError as e:  # the record left the buffer, the journal was damaged...
                log.warning("purchase %s: no proof for record %d (%s)", pid, seq, e)
                proof = None
            if proof is not None and proof.get("anchor") is None:
                break  # sealed, its anchor not confirmed yet
            if proof is not None:
                publisher.publish(self.sealers[pid].seal(proved, leaf, json.dumps(proof).encode(), kind="proof"))
                room -= 1
            proved += 1
        self._proved[pid] = proved
        if publisher.idle and p.get("proved") != proved:
            self._save()
        return proved == len(dlog.entries)

    def _maybe_due(self, pid: str, proved: bool, now_ms: int) -> None:
        """Settle once every reading of the window is decided and acknowledged, with its proof
        (or, when anchoring lags, ``PROOF_WAIT_S`` after the window: the settlement has a deadline)."""
        p, window, publisher = self.journal["purchases"][pid], self.windows[pid], self.publishers[pid]
        over_ms = now_ms - window.upto_ms
        if (self._decided.get(pid) and over_ms > SETTLE_MARGIN_MS and publisher.idle
                and (proved or over_ms > PROOF_WAIT_S * 1000)):
            p["status"] = "due"
            self._save()
            log.info("purchase %s: window over, %d reading(s) delivered, proofs for %d", pid,
                     len(self.logs[pid].entries), self._proved.get(pid, 0))

    def _get_many(self, seqs: list[int]) -> list[dict]:
        return [d for d in map(self._store.get, seqs) if d is not None]

    # -- 3. settle (chain thread) ----------------------------------------------------------------

    def _settle(self) -> None:
        w3, sender = self.chain.w3, self.chain.sender
        changed = False
        for pid, p in self.journal["purchases"].items():
            if p["status"] not in ("due", "undeliverable", "settling"):
                continue
            state = contract.purchase(w3, self.address, int(pid))
            if state["state"] != "open":
                p["status"] = "settled" if state["state"] in ("settled", "paid") else state["state"]
                p["delivered"], p["delivery_root"] = state["delivered"], state["delivery_root"]
                changed = True
                publisher = self.publishers.pop(pid, None)
                if publisher is not None:
                    publisher.close()
                log.info("purchase %s %s on chain: %d reading(s) delivered", pid, p["status"], state["delivered"])
                continue
            if int(w3.eth.block_number) < p["end"]:
                continue  # an undeliverable purchase still waits for its window's end
            tag = f"market:settle:{pid}"
            if sender.find(tag) is not None:
                continue
            dlog = self.logs.get(pid) or DeliveryLog(self.dir / f"{pid}.log")
            leaves = dlog.leaves
            root = delivery_root(leaves)
            last_time = int(w3.eth.get_block(p["end"] - 1)["timestamp"])  # the window's last second
            p["settle_tx"] = sender.submit(self.address, contract.settle_call(
                w3, self.address, int(pid), len(leaves), root, last_time), tag=tag)
            p["status"] = "settling"
            changed = True
            log.info("purchase %s: settling, %d reading(s), delivery root %s", pid, len(leaves), root.hex())
        if changed:
            self._prune()
            self._save()

    def _prune(self) -> None:
        """Forget the oldest finished purchases beyond ``KEEP_FINAL`` (the chain keeps their
        outcome; the journal and the delivery logs must not grow with every purchase ever made)."""
        final = [pid for pid, p in self.journal["purchases"].items() if p["status"] in FINAL]
        for pid in sorted(final, key=int)[:max(0, len(final) - KEEP_FINAL)]:
            del self.journal["purchases"][pid]
            self.logs.pop(pid, None)
            self.windows.pop(pid, None)
            self._cursor.pop(pid, None)
            (self.dir / f"{pid}.log").unlink(missing_ok=True)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict:
        """The purchases still being delivered or settled, and how many are done."""
        purchases, done = {}, 0
        for pid, p in self.journal["purchases"].items():
            if p["status"] in FINAL:
                done += 1
                continue
            publisher = self.publishers.get(pid)
            purchases[pid] = {"device": p["device"], "blocks": [p["start"], p["end"]], "status": p["status"],
                              "delivered": len(self.logs[pid].entries) if pid in self.logs else p.get("delivered", 0),
                              "endpoint": _display(p["endpoint"], int(pid)),
                              "connected": publisher.connected if publisher else False,
                              "problem": p.get("problem") or (publisher.error if publisher else None)}
        return {"contract": self.address, "trouble": self.trouble, "purchases": purchases, "done": done}


def _display(url: str, pid: int) -> str:
    try:
        return parse_endpoint(url, pid).display
    except EndpointError as e:
        return f"(refused: {e.reason})"


def read_journal(layout: DataDir) -> dict:
    """The journal as `w3gate market status` shows it without a running gateway."""
    return read_json(Path(layout.market) / "journal.json") or {"next_block": None, "purchases": {}}
