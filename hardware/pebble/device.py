"""One emulated Pebble: the firmware's behaviour without the network.

``PebbleDevice`` builds the exact bytes a device publishes (DATA, CONFIG, confirm, query) and
reacts to the backend's downlinks as the firmware does: the registration state machine,
Riverrock's config parser, firmware-update requests and the 256-byte MQTT buffer
(docs/pebble-wire.md, "Device lifecycle"). The fleet (fleet.py) moves these bytes over MQTT; tests and benches can use them
directly.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from enum import Enum

from hardware.errors import EmulatorError
from hardware.pebble import encoding, topics
from hardware.pebble.encoding import CONFIG, DATA
from hardware.pebble.firmware import ALL_CHANNELS, profile_for_firmware
from hardware.pebble.firmware import profile as firmware_profile
from hardware.pebble.keystore import Identity
from hardware.pebble.signing import normalize_address, sign
from hardware.pebble.sensors import Sample, SensorModel, g1_fields, sensor_data

MQTT_BUFFER = 256  # CONFIG_MQTT_MESSAGE/PAYLOAD_BUFFER_SIZE: a larger downlink drops the link
PERIOD_MIN, PERIOD_MAX = 10, 86400
DEFAULT_PERIOD = 300
QUERY_INTERVAL_S = 5.0  # registration-mode polling of device/<IMEI>/query
RECONFIRM_EVERY = 6  # while waiting for status 2, re-send the confirm every 6th status-1 answer


class DeviceError(EmulatorError):
    """The device cannot do what was asked (e.g. a CONFIG package from a G1 device)."""

    reason = "device"


class Registration(str, Enum):
    OFF = "off"  # normal duty cycle
    WAITING = "waiting"  # polling; status 0 or no answer yet ("press enter" on the screen)
    PROPOSED = "proposed"  # status 1: proposer shown, waiting for the button
    CONFIRMING = "confirming"  # confirm sent, waiting for status 2


@dataclass(frozen=True)
class Message:
    """Something a device publishes. ``digest`` is sha256 of the signed bytes (None when nothing
    was signed); ``fault`` names the injected fault, None for a clean message."""

    imei: str  # the IMEI in the topic (a stranger's for the unknown_device fault)
    topic: str
    payload: bytes
    kind: str  # "data", "config", "confirm" or "query"
    profile: str = ""
    timestamp: int | None = None
    digest: bytes | None = None
    nonce: str | None = None
    fault: str | None = None


@dataclass
class DownlinkResult:
    """What the device made of a downlink; ``replies`` are messages it publishes in response."""

    kind: str  # "status", "config", "firmware" or "unknown"
    accepted: bool
    detail: str = ""
    disconnect: bool = False  # larger than the MQTT buffer: the device drops the connection
    replies: list[Message] = field(default_factory=list)
    changes: dict = field(default_factory=dict)


def _version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in text.strip().lstrip("vV").split("."))
    except ValueError:
        return None


def _atoi(text: str) -> int:
    """C atoi: optional sign and leading digits, 0 when there are none."""
    text = text.strip()
    sign_ = -1 if text[:1] == "-" else 1
    digits = ""
    for ch in text.lstrip("+-"):
        if not ch.isdigit():
            break
        digits += ch
    return sign_ * int(digits) if digits else 0


class PebbleDevice:
    """A Pebble's firmware state and message builders. ``seed`` makes sensors and nonces
    reproducible; leave it None in anything that talks to a real gateway across runs (a
    repeated nonce is refused as nonce_reuse)."""

    def __init__(self, identity: Identity, *, seed: int | str | None = None,
                 upload_period: int = DEFAULT_PERIOD, data_channel: int = ALL_CHANNELS,
                 precise_gps: bool = False, registering: bool = False, auto_confirm: bool = True,
                 leading_zero_defect: bool = False) -> None:
        self.identity = identity
        self.imei = identity.imei
        self._key = identity.key
        self._public_key = self._key.public_key.format(compressed=False)
        self.profile = firmware_profile(identity.profile)
        self.app, _, self.version = self.profile.firmware.partition(" ")
        self.upload_period = min(max(int(upload_period), PERIOD_MIN), PERIOD_MAX)
        self.data_channel = data_channel
        self.precise_gps = precise_gps
        self.topic_override: str | None = None
        self.config_name: str | None = None
        # G1 firmware has no registration flow: only protobuf devices enter it.
        self.registration = (Registration.WAITING if registering and self.profile.wire == "protobuf"
                             else Registration.OFF)
        self.proposer: str | None = None
        self.owner: str | None = None  # set when the backend reports the registration confirmed
        self.auto_confirm = auto_confirm  # "press the button" as soon as a proposal arrives
        self.leading_zero_defect = leading_zero_defect
        self.ota: list[dict] = []
        self.boot_messages = 0  # G1 sends its public key in the first two messages after boot
        self._status1_repeats = 0
        self.sensors = SensorModel(None if seed is None else f"{seed}:{self.imei}:sensors")
        self._rng = random.Random(None if seed is None else f"{seed}:{self.imei}:nonce")
        self._sensor_time: float | None = None

    # -- state -----------------------------------------------------------------------------------

    @property
    def registering(self) -> bool:
        return self.registration is not Registration.OFF

    @property
    def firmware(self) -> str:
        """What the device reports in SensorConfig.firmware, e.g. "Riverrock 1.0.14"."""
        return f"{self.app} {self.version}".strip()

    @property
    def data_topic(self) -> str:
        if self.topic_override:
            return self.topic_override
        if self.profile.wire == "json":
            return topics.G1_DATA_TOPIC.format(self.imei)
        return topics.DATA_TOPIC.format(self.imei)

    def downlink_topics(self) -> list[str]:
        """Topics subscribed in the normal duty cycle (status only while registering). G1
        firmware listened on other, legacy topics, so an emulated G1 device takes none."""
        if self.profile.wire != "protobuf":
            return []
        return [topics.CONFIG_TOPIC.format(self.imei), topics.FIRMWARE_TOPIC.format(self.imei)]

    @property
    def status_topic(self) -> str:
        return topics.STATUS_TOPIC.format(self.imei)

    def reboot(self) -> None:
        self.boot_messages = 0

    # -- building messages -----------------------------------------------------------------------

    def new_nonce(self) -> str:
        """SensorData.random: 8 random bytes as 16 lower-case hex characters."""
        return f"{self._rng.getrandbits(64):016x}"

    def read_sensors(self, now: float) -> Sample:
        """The next reading. Sensor time advances one upload period per reading (so a fleet at
        time-scale 100 sees a day go by in 15 minutes) and never lags the real clock."""
        t = now if self._sensor_time is None else max(self._sensor_time + self.upload_period, now)
        self._sensor_time = t
        return self.sensors.read(t)

    def _sign(self, digest: bytes) -> tuple[bytes, bool]:
        """r||s as this firmware writes it; True when the leading-zero defect garbled it.

        Riverrock <= 1.0.13 copies r and s with their mbedtls_mpi_size() lengths, so a half with
        a leading zero byte is one byte short and the buffer is misaligned (docs/pebble-wire.md,
        "Signatures"; inferred from the code): the halves are emulated packed together and zero-padded to 64 bytes."""
        sig = sign(self._key, digest, low_s=self.profile.low_s)
        if (self.leading_zero_defect and self.profile.low_s and self.profile.wire == "protobuf"
                and (sig[0] == 0 or sig[32] == 0)):
            return (sig[:32].lstrip(b"\0") + sig[32:].lstrip(b"\0")).ljust(64, b"\0"), True
        return sig, False

    def data_message(self, now: float | None = None, *, timestamp: int | None = None,
                     nonce: str | None = None) -> Message:
        """The next DATA message. ``timestamp`` overrides the device clock and ``nonce`` the
        random value (fault injection uses both)."""
        now = time.time() if now is None else now
        ts = int(now) if timestamp is None else int(timestamp)
        nonce = self.new_nonce() if nonce is None else nonce
        sample = self.read_sensors(now)
        if self.profile.wire == "json":
            return self._g1_message(sample, ts, nonce)
        data = encoding.encode_sensor_data(sensor_data(
            sample, channels=self.data_channel, precise_gps=self.precise_gps,
            temperature_encoding=self.profile.temperature, nonce=nonce))
        return self._package(DATA, data, ts, "data", nonce)

    def _package(self, type_: int, data: bytes, ts: int, kind: str, nonce: str | None) -> Message:
        digest = hashlib.sha256(encoding.package_preimage(type_, data, ts)).digest()
        sig, garbled = self._sign(digest)
        payload = encoding.encode_binpackage(type_, data, ts, sig)
        return Message(self.imei, self.data_topic, payload, kind, self.profile.name, ts, digest, nonce,
                       "leading_zero" if garbled else None)

    def _g1_message(self, sample: Sample, ts: int, nonce: str) -> Message:
        fields = g1_fields(sample, channels=self.data_channel, timestamp=ts, nonce=nonce)
        if self.boot_messages < 2:
            fields["eccPubkey"] = encoding.swap_nibbles(self._public_key[1:].hex().upper())
        self.boot_messages += 1
        text = encoding.encode_g1_message(fields)
        digest = hashlib.sha256(text).digest()
        sig, _ = self._sign(digest)
        return Message(self.imei, self.data_topic, encoding.encode_g1(text, sig), "data", self.profile.name,
                       ts, digest, nonce)

    def config_message(self, now: float | None = None) -> Message:
        """The CONFIG package sent once registration is confirmed (on the data topic)."""
        if self.profile.wire != "protobuf":
            raise DeviceError(f"{self.profile.name} firmware sends no CONFIG package", reason="unsupported")
        now = time.time() if now is None else now
        data = encoding.encode_sensor_config(data_channel=self.data_channel, upload_period=self.upload_period,
                                             firmware=self.firmware)
        return self._package(CONFIG, data, int(now), "config", None)

    def confirm_message(self, owner: str, now: float | None = None) -> Message:
        """A ConfirmPackage accepting ``owner``; the channel mask rides along unsigned."""
        try:
            raw_owner = bytes.fromhex(normalize_address(owner)[2:])
        except ValueError as e:
            raise DeviceError(f"bad owner address {owner!r}: {e}", reason="bad_address") from None
        ts = int(time.time() if now is None else now)
        digest = hashlib.sha256(encoding.confirm_preimage(raw_owner, ts)).digest()
        sig, garbled = self._sign(digest)
        payload = encoding.encode_confirm(raw_owner, ts, sig, self.data_channel)
        return Message(self.imei, topics.CONFIRM_TOPIC.format(self.imei), payload, "confirm", self.profile.name, ts,
                       digest, None, "leading_zero" if garbled else None)

    def query_message(self) -> Message:
        """The registration-mode poll: an empty payload on device/<IMEI>/query."""
        return Message(self.imei, topics.QUERY_TOPIC.format(self.imei), b"", "query", self.profile.name)

    def press_button(self, now: float | None = None) -> Message:
        """The user accepts the proposal shown on the screen: sign and send the confirm."""
        if self.registration not in (Registration.PROPOSED, Registration.CONFIRMING) or not self.proposer:
            raise DeviceError(f"no proposal to confirm (registration {self.registration.value})",
                              reason="no_proposal")
        self.registration = Registration.CONFIRMING
        self._status1_repeats = 0
        return self.confirm_message(self.proposer, now)

    # -- downlinks -------------------------------------------------------------------------------

    def handle_downlink(self, topic: str, payload: bytes, now: float | None = None) -> DownlinkResult:
        """React to a message on backend/<IMEI>/status|config|firmware as the firmware does."""
        now = time.time() if now is None else now
        kind = {topics.STATUS_TOPIC.format(self.imei): "status", topics.CONFIG_TOPIC.format(self.imei): "config",
                topics.FIRMWARE_TOPIC.format(self.imei): "firmware"}.get(topic)
        if kind is None:
            return DownlinkResult("unknown", False, f"not a downlink for {self.imei}: {topic}")
        if len(payload) > MQTT_BUFFER:
            return DownlinkResult(kind, False, f"{len(payload)} bytes overflow the {MQTT_BUFFER}-byte MQTT "
                                  "buffer: the device disconnects", disconnect=True)
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return DownlinkResult(kind, False, "not JSON")
        if not isinstance(doc, dict):
            return DownlinkResult(kind, False, "not a JSON object")
        handler = {"status": self._on_status, "config": self._on_config, "firmware": self._on_firmware}[kind]
        return handler(doc, now)

    def _on_status(self, doc: dict, now: float) -> DownlinkResult:
        if not self.registering:
            return DownlinkResult("status", False, "not in registration mode")
        status = doc.get("status")
        if isinstance(status, bool) or status not in (0, 1, 2):
            return DownlinkResult("status", False, f"unknown status {status!r}")
        if status == 0:
            self.registration, self.proposer = Registration.WAITING, None
            return DownlinkResult("status", True, "not proposed yet: press enter", changes={"status": 0})
        if status == 1:
            try:
                proposer = normalize_address(str(doc.get("proposer", "")))
            except ValueError:
                return DownlinkResult("status", False, f"status 1 with a bad proposer {doc.get('proposer')!r}")
            if self.registration is Registration.CONFIRMING and proposer == self.proposer:
                self._status1_repeats += 1
                if self._status1_repeats % RECONFIRM_EVERY:
                    return DownlinkResult("status", True, "confirm sent, waiting for status 2")
                return DownlinkResult("status", True, "no status 2 yet: confirm sent again",
                                      replies=[self.confirm_message(proposer, now)])
            self.proposer, self.registration = proposer, Registration.PROPOSED
            result = DownlinkResult("status", True, f"proposed by {proposer}", changes={"status": 1})
            if self.auto_confirm:
                result.replies.append(self.press_button(now))
                result.detail += ": button pressed, confirm sent"
            return result
        # status 2: confirmed; report the configuration and leave registration mode
        try:
            self.owner = normalize_address(str(doc["proposer"])) if doc.get("proposer") else self.proposer
        except ValueError:
            self.owner = self.proposer
        self.registration = Registration.OFF
        return DownlinkResult("status", True, "registration confirmed", changes={"status": 2},
                              replies=[self.config_message(now)])

    def _on_config(self, doc: dict, now: float) -> DownlinkResult:
        """Riverrock's iotex_mqtt_parse_config: all or nothing. upload_period is a string (C
        atoi, clamped 10..86400), data_channel a number (clamped to <= 8183 after the C
        conversion to uint32), preciseGPS a bool. Unknown keys (e.g. camelCase) are ignored."""

        def reject(why: str) -> DownlinkResult:
            return DownlinkResult("config", False, why)

        if doc.get("appName") != "Riverrock":
            return reject(f"appName {doc.get('appName')!r} is not 'Riverrock'")
        wanted = doc.get("appVersion")
        if wanted is not None:
            if not isinstance(wanted, str) or _version(wanted.rstrip("+")) is None:
                return reject(f"bad appVersion {wanted!r}")
            running, required = _version(self.version) or (0,), _version(wanted.rstrip("+"))
            ok = running >= required if wanted.endswith("+") else running == required
            if not ok:
                return reject(f"config is for {wanted}, running {self.version or '?'}")
        changes: dict = {}
        if "upload_period" in doc:
            value = doc["upload_period"]
            if not isinstance(value, str):
                return reject(f"upload_period must be a string, got {type(value).__name__}")
            changes["upload_period"] = min(max(_atoi(value), PERIOD_MIN), PERIOD_MAX)
        if "data_channel" in doc:
            value = doc["data_channel"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return reject(f"data_channel must be a number, got {type(value).__name__}")
            changes["data_channel"] = min(int(value) & 0xFFFFFFFF, ALL_CHANNELS)
        if "preciseGPS" in doc:
            if not isinstance(doc["preciseGPS"], bool):
                return reject("preciseGPS must be true or false")
            changes["precise_gps"] = doc["preciseGPS"]
        if "trusttreamTopic" in doc:
            value = doc["trusttreamTopic"]
            if not isinstance(value, str) or not value:
                return reject("trusttreamTopic must be a non-empty string")
            changes["topic_override"] = value.replace("$imei", self.imei)
        if isinstance(doc.get("configName"), str):
            changes["config_name"] = doc["configName"]
        for name, value in changes.items():
            setattr(self, name, value)
        return DownlinkResult("config", True, "applied " + (", ".join(f"{k}={v}" for k, v in changes.items())
                                                           or "nothing"), changes=changes)

    def _on_firmware(self, doc: dict, now: float) -> DownlinkResult:
        """An OTA request: recorded (no image is downloaded); the device then runs, and reports,
        the new version, with that version's signing behaviour."""
        if self.registering:
            return DownlinkResult("firmware", False, "registering: firmware update ignored")
        app, uri, version = doc.get("firmware"), doc.get("uri"), doc.get("version")
        if not all(isinstance(v, str) and v for v in (app, uri, version)):
            return DownlinkResult("firmware", False, "firmware, uri and version must be strings")
        if app != self.app:
            return DownlinkResult("firmware", False, f"image is for {app!r}, this device runs {self.app!r}")
        if not uri.startswith("https://"):
            return DownlinkResult("firmware", False, "fota_download takes https:// images only")
        new = _version(version)
        if new is None:
            return DownlinkResult("firmware", False, f"bad version {version!r}")
        if new <= (_version(self.version) or (0,)):
            return DownlinkResult("firmware", False, f"already running {self.version} (offered {version})")
        old = self.firmware
        self.version = version.lstrip("vV")
        upgraded = profile_for_firmware(self.firmware)
        if upgraded is not None and upgraded.wire == self.profile.wire:
            self.profile = upgraded
        self.ota.append({"time": now, "from": old, "to": self.firmware, "uri": uri})
        self.reboot()
        return DownlinkResult("firmware", True, f"updated {old} -> {self.firmware}",
                              changes={"firmware": self.firmware})
