"""Recent readings per device, in memory, for the dashboard's plots and GPS tracks.

Why a copy in memory: the plots need the last few hundred values of one device, and the buffer
keeps records as evidence (payloads decoded on demand, in segment files the store thread owns).
So the history is filled from the store, never from the ingest path: seeded at start from the
newest records, then kept current by asking the store, about once a second and only when a group
commit happened since, for the records above the last seq seen. Both reads run on the store's
own thread (``committer.call``), and so does decoding, which keeps the event loop free; the
history itself is changed only on the event loop, where the pages read it.

Bounded everywhere: ``POINTS`` values and ``TRACK`` positions per device, ``DEVICES`` devices
(the one heard from longest ago goes first), ``PER_POLL`` records per poll (under a flood the
plots show the newest of each second rather than the loop falling behind). Points are packed
(``Ring``: 48 bytes a point, 32 a position, no Python object each), so a full history costs
24 KB per device: 1.2 MB for 50 devices, 12 MB at most.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.buffer.store import RecordStore
from gateway.codec.record import Record

POINTS = 300  # values per device
TRACK = 300  # GPS positions per device
DEVICES = 500  # devices remembered
SEED = 3000  # newest records read at start
PER_POLL = 500  # newest records taken per poll
SERIES = ("temperature", "humidity", "pressure", "battery")  # what each point holds, in this order
MAX_TEXT = 80  # device-supplied strings kept (firmware, board): longer ones are cut

# A point: (receive time s, seq, temperature degC, humidity %RH, pressure hPa, battery V); None
# where the reading has no such value. A position: (receive time s, seq, latitude, longitude).
Point = tuple[float, int, float | None, float | None, float | None, float | None]
Position = tuple[float, int, float, float]


@dataclass(slots=True)
class Reading:
    """What one record adds to its device's history, made on the store thread."""

    device: str
    family: str  # "pebble" or "legacy"
    kind: str
    seq: int
    rx: float
    point: Point | None = None  # a data record with at least one plotted value
    position: Position | None = None  # a data record with a GPS fix
    facts: dict = field(default_factory=dict)  # latest facts: signal, battery, firmware, ...


class Ring:
    """The last ``capacity`` tuples of one struct format, packed in one bytearray that grows to
    ``capacity`` and then wraps. A missing value (None) is kept as NaN, which no reading holds
    (``reading_of`` lets only finite numbers through), and comes back as None."""

    __slots__ = ("buf", "capacity", "count", "layout", "start")

    def __init__(self, fmt: str, capacity: int) -> None:
        self.layout = struct.Struct(fmt)
        self.capacity = capacity
        self.buf = bytearray()
        self.start = 0  # index of the oldest item once full
        self.count = 0

    def append(self, item: tuple) -> None:
        packed = self.layout.pack(*(math.nan if v is None else v for v in item))
        if self.count < self.capacity:
            self.buf += packed
            self.count += 1
            return
        size = self.layout.size
        at = self.start * size
        self.buf[at:at + size] = packed
        self.start = (self.start + 1) % self.capacity

    def __len__(self) -> int:
        return self.count

    def items(self) -> list[tuple]:
        """Oldest first."""
        cut = self.start * self.layout.size
        data = bytes(self.buf[cut:]) + bytes(self.buf[:cut])
        return [tuple(None if math.isnan(v) else v for v in item) for item in self.layout.iter_unpack(data)]


@dataclass(slots=True)
class DeviceHistory:
    """One device's recent points, track and latest facts."""

    family: str
    points: Ring = field(default_factory=lambda: Ring("<dqdddd", POINTS))  # Point
    track: Ring = field(default_factory=lambda: Ring("<dqdd", TRACK))  # Position
    facts: dict = field(default_factory=dict)
    last_seen: float = 0.0
    last_seq: int = 0
    last_kind: str = ""
    records: int = 0  # records seen since the dashboard started (including the seeded ones)


def _number(value: Any) -> float | None:
    """A finite number from device data, else None (a string, a bool, NaN never reach a plot)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def reading_of(doc: dict, profile: str | None = None) -> Reading | None:
    """What a stored record shows on the dashboard; None for a record that is not a device's (a
    document edited by hand without a device, seq or receive time)."""
    device, seq, rx = doc.get("device"), doc.get("seq"), _number(doc.get("rx"))
    if not isinstance(device, str) or not isinstance(seq, int) or rx is None:
        return None
    record = Record(doc)
    kind = str(doc.get("kind", ""))
    family = "pebble" if record.of("pebble") else "legacy" if record.of("legacy") else "unknown"
    out = Reading(device[:MAX_TEXT], family, kind[:MAX_TEXT], seq, rx)
    values = record.values(profile)
    if "error" in values and len(values) == 1:
        return out  # no longer decodes: seen, nothing to plot
    if kind == "data":
        battery = _number(values.get("vbat", values.get("battery")))
        point = (rx, seq, _number(values.get("temperature")), _number(values.get("humidity")),
                 _number(values.get("pressure")), battery)
        if any(v is not None for v in point[2:]):
            out.point = point
        lat, lon = _number(values.get("latitude")), _number(values.get("longitude"))
        if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180 \
                and values.get("gps_fix", True) is not False:
            out.position = (rx, seq, lat, lon)
        for name, key in (("battery", None), ("signal", "snr")):
            value = battery if key is None else _number(values.get(key))
            if value is not None:
                out.facts[name] = value
    elif kind == "config":  # a Pebble's settings: its firmware version
        if (firmware := _text(values.get("firmware"))):
            out.facts["firmware"] = firmware
    elif kind == "hello":  # a legacy sensor's greeting (device_fw/app.py): firmware, board
        if (firmware := _text(values.get("fw"))):
            out.facts["firmware"] = firmware
        if (board := _text(values.get("board"))):
            out.facts["board"] = board
    return out


def read_after(store: RecordStore, after_seq: int, limit: int,
               profiles: Mapping[str, str]) -> tuple[list[Reading], int]:
    """On the store thread: the newest ``limit`` records above ``after_seq``, oldest first, as
    readings, and the highest seq seen (``after_seq`` when none)."""
    docs = list(store.iter_records(newest_first=True, after_seq=after_seq or None, limit=limit))
    docs.reverse()
    readings = []
    for doc in docs:
        reading = reading_of(doc, profiles.get(doc.get("device")))
        if reading is not None:
            readings.append(reading)
    return readings, max((d["seq"] for d in docs), default=after_seq)


class ReadingHistory:
    """The recent readings of every device. ``add`` and ``follow`` run on the event loop only."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceHistory] = {}  # ordered: least recently heard first
        self.last_seq = 0  # the newest record taken in
        self.seeded = False

    def add(self, readings: Iterable[Reading]) -> list[Reading]:
        """Take in readings (oldest first); returns those that were new."""
        taken = []
        for r in readings:
            history = self.devices.pop(r.device, None)  # re-inserted: the order says who was heard last
            if history is None:
                history = DeviceHistory(r.family)
                while len(self.devices) >= DEVICES:
                    del self.devices[next(iter(self.devices))]
            self.devices[r.device] = history
            if r.seq <= history.last_seq:
                continue
            history.last_seq, history.last_seen, history.last_kind = r.seq, r.rx, r.kind
            history.records += 1
            if r.point is not None:
                history.points.append(r.point)
            if r.position is not None:
                history.track.append(r.position)
            history.facts.update(r.facts)
            self.last_seq = max(self.last_seq, r.seq)
            taken.append(r)
        return taken

    async def seed(self, committer: Any, store: RecordStore, profiles: Mapping[str, str]) -> None:
        """Fill from the buffer's newest ``SEED`` records (once, at start)."""
        readings, upto = await committer.call(read_after, store, 0, SEED, dict(profiles))
        self.add(readings)
        self.last_seq = max(self.last_seq, upto)
        self.seeded = True

    async def poll(self, committer: Any, store: RecordStore, profiles: Mapping[str, str]) -> list[Reading]:
        """Take in what was stored since the last poll; returns the new readings."""
        readings, upto = await committer.call(read_after, store, self.last_seq, PER_POLL, dict(profiles))
        taken = self.add(readings)
        self.last_seq = max(self.last_seq, upto)
        return taken

    def series(self, device: str) -> dict | None:
        """One device's points and track for its plots; None for a device not heard from."""
        history = self.devices.get(device)
        if history is None:
            return None
        return {"device": device, "series": list(SERIES), "points": history.points.items(),
                "track": history.track.items(), "last_seq": history.last_seq}

    def summaries(self) -> dict[str, dict]:
        """The latest facts of every device heard from: last seen, battery, signal, firmware, ..."""
        return {device: {"family": h.family, "last_seen": h.last_seen, "last_seq": h.last_seq,
                         "last_kind": h.last_kind, "records": h.records, "points": len(h.points),
                         "positions": len(h.track), **h.facts}
                for device, h in self.devices.items()}


def changed_since(readings: Iterable[Reading]) -> dict[str, dict]:
    """New points and positions by device, for the live updates the pages receive."""
    out: dict[str, dict] = {}
    for r in readings:
        if r.point is None and r.position is None:
            continue
        entry = out.setdefault(r.device, {"points": [], "track": []})
        if r.point is not None:
            entry["points"].append(r.point)
        if r.position is not None:
            entry["track"].append(r.position)
    return out
