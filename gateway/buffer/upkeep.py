"""The buffer's housekeeping: its figures for status, refreshed once a second, and expiry of
records past their retention, a whole segment at a time. Both run on the store thread."""
from __future__ import annotations

import logging

from gateway.buffer.commit import GroupCommitter
from gateway.buffer.store import RecordState, RecordStore

log = logging.getLogger("w3gate.buffer")


class BufferUpkeep:
    """``expire_at``: the state a record must reach before it may expire (anchored with a chain,
    processed by the applets without one)."""

    def __init__(self, store: RecordStore, committer: GroupCommitter, *, expire_at: RecordState) -> None:
        self.store = store
        self.committer = committer
        self.expire_at = expire_at
        self.stats: dict = {}  # RecordStore.stats(), as of the last refresh

    async def refresh(self) -> None:
        self.stats = await self.committer.call(self.store.stats)

    async def expire(self) -> None:
        expired = await self.committer.call(self.store.expire, None, self.expire_at)
        if expired:
            log.info("expired %d records past the retention of %.0f s", expired, self.store.config.retention_s)
