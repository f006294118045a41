"""bleak's scanner interface over the Bumble host's advertisements."""
from __future__ import annotations

from typing import Any, Literal, Optional

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bumble.core import UUID, AdvertisingData

from gateway.ble.host import get_device

_UUID_LISTS = tuple(range(0x02, 0x08))  # incomplete/complete lists of 16, 32 and 128-bit UUIDs


def bleak_uuid(uuid: UUID) -> str:
    """bleak's string form: bumble's 128-bit bytes are little-endian."""
    raw = uuid.to_bytes(force_128=True)[::-1].hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def advertisement_data(adv) -> AdvertisementData:
    data: AdvertisingData = adv.data
    uuids: list[str] = []
    for ad_type in _UUID_LISTS:
        for uuid in data.get(ad_type, raw=False) or []:
            text = bleak_uuid(uuid)
            if text not in uuids:
                uuids.append(text)
    name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME, raw=False) or \
        data.get(AdvertisingData.SHORTENED_LOCAL_NAME, raw=False)
    manufacturer = {}
    raw_manufacturer = data.get(AdvertisingData.MANUFACTURER_SPECIFIC_DATA, raw=True)
    if raw_manufacturer and len(raw_manufacturer) >= 2:
        manufacturer[int.from_bytes(raw_manufacturer[:2], "little")] = bytes(raw_manufacturer[2:])
    tx_power = data.get(AdvertisingData.TX_POWER_LEVEL, raw=False)
    return AdvertisementData(local_name=name, manufacturer_data=manufacturer, service_data={},
                             service_uuids=uuids, tx_power=tx_power, rssi=adv.rssi, platform_data=(adv,))


class BumbleScanner(BaseBleakScanner):
    def __init__(self, detection_callback: Optional[AdvertisementDataCallback], service_uuids: Optional[list[str]],
                 scanning_mode: Literal["active", "passive"] = "active", **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self._active = scanning_mode == "active"
        self._device = None

    async def start(self) -> None:
        self.seen_devices = {}
        self._device = await get_device()
        self._device.on("advertisement", self._on_advertisement)
        await self._device.start_scanning(active=self._active, filter_duplicates=False)

    async def stop(self) -> None:
        if self._device is None:
            return
        self._device.remove_listener("advertisement", self._on_advertisement)
        try:
            await self._device.stop_scanning()
        finally:
            self._device = None

    def _on_advertisement(self, adv) -> None:
        data = advertisement_data(adv)
        if not self.is_allowed_uuid(data.service_uuids):
            return
        address = str(adv.address).removesuffix("/P")
        device = self.create_or_update_device(address, address, data.local_name, adv.address, data)
        self.call_detection_callbacks(device, data)
