"""What the node holds of one device in a time window, as a credential states it: the device's
identity and owner from the registries, its records from the buffer, and the anchors covering
them from the batch journal. Read-only: it runs beside `w3gate run`.

Why refuse rather than understate: a credential is a claim someone relies on. Records not yet
anchored are refused unless asked for (and then counted apart), and a window reaching back past
what the buffer still holds is refused, since records already expired could not be counted.
"""
from __future__ import annotations

from bisect import bisect_right

from gateway.buffer.store import RecordStore
from gateway.codec.record import received_ms
from gateway.credentials.vc import Anchor, CredentialError, Subject, did_of, iso_ms
from gateway.layout import DataDir
from gateway.legacy.registry import LegacyRegistry
from gateway.proofs.journal import BatchJournal
from gateway.verify.registry import STATUS_CONFIRMED, Registry

LEGACY_OWNER_NOTE = ("a legacy sensor has no owner binding: pairing records only its id, name and transport; "
                     "its records are attested by the issuer")


def collect(layout: DataDir, device: str, from_ms: int, to_ms: int, *, issuer_address: str,
            allow_unanchored: bool = False) -> Subject:
    """The subject of a credential about ``device``'s records received in [from_ms, to_ms]
    (both inclusive, in the leaf's milliseconds). CredentialError with the reason otherwise."""
    if from_ms > to_ms:
        raise CredentialError(f"the window starts at {iso_ms(from_ms)}, after it ends ({iso_ms(to_ms)})",
                              reason="bad_time")
    if not layout.records.is_dir():
        raise CredentialError(f"no records in {layout.root} yet", reason="no_records")
    pebbles, sensors = Registry(layout.devices), LegacyRegistry(layout.legacy_devices)
    store = RecordStore(layout.records, readonly=True)
    try:
        journal = BatchJournal(layout.proofs, store)
        records = [doc for doc in store.iter_records(device=device, newest_first=False, since_rx=from_ms / 1000 - 1)
                   if from_ms <= received_ms(doc["rx"]) <= to_ms]
        oldest_held = store.stats()["first_seq"]
    finally:
        store.close()
    if not records:
        raise CredentialError(f"no records of device {device} received in {iso_ms(from_ms)} .. {iso_ms(to_ms)}",
                              reason="no_records")
    batches = journal.batches
    expired = [b for b in batches if oldest_held is not None and b.first < oldest_held
               and b.last_ms >= from_ms and b.first_ms <= to_ms]
    if expired:
        raise CredentialError(f"records of batches {expired[0].sequence}..{expired[-1].sequence}, received in the "
                              "window, have expired from the buffer: they cannot be counted; start the window "
                              f"after {iso_ms(expired[-1].last_ms)}", reason="records_expired")

    meta = journal.meta
    if meta.get("gateway") and meta["gateway"].lower() != issuer_address.lower():
        raise CredentialError(f"{layout.proofs} is the journal of gateway {meta['gateway']}, not of the node key "
                              f"{issuer_address}", reason="wrong_key")
    firsts = [b.first for b in batches]
    per_batch: dict[int, int] = {}
    unanchored = 0
    for doc in records:
        i = bisect_right(firsts, doc["seq"]) - 1
        batch = batches[i] if i >= 0 and batches[i].first <= doc["seq"] <= batches[i].last else None
        if batch is None or batch.status != "anchored" or not batch.tx or batch.block is None:
            unanchored += 1
        else:
            per_batch[i] = per_batch.get(i, 0) + 1
    if unanchored and not allow_unanchored:
        raise CredentialError(f"{unanchored} of the {len(records)} records of device {device} in the window are not "
                              "anchored yet: wait for their anchors, end the window earlier, or state them with "
                              "--allow-unanchored", reason="unanchored")
    anchors = tuple(Anchor(batches[i].root.lower(), batches[i].sequence, batches[i].count, batches[i].first_ms,
                           batches[i].last_ms, batches[i].tx.lower(), batches[i].block, n)
                    for i, n in sorted(per_batch.items()))
    times = [received_ms(doc["rx"]) for doc in records]
    kind, did, owner, note = _identity(device, records, pebbles, sensors)
    chain_id, registry = (meta.get("chain_id"), meta.get("registry")) if anchors else (None, None)
    if anchors and not (isinstance(chain_id, int) and isinstance(registry, str)):
        raise CredentialError(f"{layout.proofs} names no chain and registry for its anchors", reason="journal_corrupt")
    registry = registry.lower() if registry else None
    return Subject(device, kind, did, "gateway-attested" if kind == "legacy" else "secure-element", owner, note,
                   from_ms, to_ms, len(records), min(times), max(times), unanchored, chain_id, registry, anchors)


def _identity(device: str, records: list[dict], pebbles: Registry,
              sensors: LegacyRegistry) -> tuple[str, str | None, str | None, str | None]:
    """(kind, device DID, owner DID, why no owner): a Pebble is named by its key's address, as
    the proofs name it; a legacy sensor has no key of its own, so no DID."""
    if records[0].get("wire") == "legacy" or sensors.get(device) is not None:
        return "legacy", None, None, LEGACY_OWNER_NOTE
    registered = pebbles.get(device)
    addresses = {(doc.get("address") or (registered.address if registered else "")).lower() for doc in records}
    addresses.discard("")
    if not addresses:
        raise CredentialError(f"device {device} is not registered and its records name no address",
                              reason="unknown_device")
    if len(addresses) > 1:
        raise CredentialError(f"device {device}'s records in the window are signed by {len(addresses)} keys: "
                              "issue one credential per key (narrow the window)", reason="mixed_identity")
    address = addresses.pop()
    if registered is None or registered.address.lower() != address:
        return "pebble", did_of(address), None, "the device is no longer registered with this key"
    if registered.owner and registered.status == STATUS_CONFIRMED:
        return "pebble", did_of(address), did_of(registered.owner), None
    if registered.owner:
        return "pebble", did_of(address), None, f"owner {registered.owner} proposed, not confirmed by the device"
    return "pebble", did_of(address), None, "no owner registered"
