# The legacy-sensor firmware: read the enabled sensors every period, send each reading as an
# authenticated frame (device_fw/frame.py) over the serial link and/or BLE, and apply settings
# the gateway sends down. Runs unchanged on a board and on the MicroPython unix port.
#
# Files in the working directory (a board's flash):
#   device.json  written at pairing: {"id": 16 hex, "key": 64 hex, "name", "link": "stdio" |
#                "uart:<n>:<baud>:<tx>:<rx>" | <tty path>, "ble": false, "period_ms": 1000,
#                "sensors": ["sim"], optional wiring "i2c": {"id", "scl", "sda"}, "dht_pin",
#                "relay_pin", "sim_seed"}. A BLE device without "id" and "key" waits to be provisioned.
#   state.json   kept by the firmware: {"seq": reserved upper bound, "config_seq", "boot",
#                "config": the settings the gateway sent, "command_seq": the last COMMAND applied,
#                "outputs": {"relay": 0 | 1} as the commands left them, driven again at boot}
#   relay.out    on the unix port only: the relay's level, as a pin would show it (hal.output)
#
# Memory: everything the loop needs is made once; a frame costs a few short-lived bytes
# objects, and gc.collect() runs between readings (docs/firmware.md has the heap figures).

import gc
import json

from device_fw import frame, hal, sensors

FIRMWARE = "w3gate-fw 0.1"
DEVICE_FILE = "device.json"
STATE_FILE = "state.json"
SEQ_BLOCK = 256  # seqs reserved per write of state.json (flash wear: one write per 256 frames)
MIN_PERIOD_MS = 10
OUTPUTS = ("relay",)  # what a COMMAND may set


def _compact(values):
    try:
        return json.dumps(values, separators=(",", ":")).encode()
    except TypeError:  # a MicroPython built without separators
        return json.dumps(values).encode()


class Firmware:
    def __init__(self, device, state):
        self.device = device
        self.state = state
        self.id = bytes.fromhex(device["id"])
        self.key = bytes.fromhex(device["key"])
        self.mac = frame.prepared_hmac(self.key)
        self.config = {"period_ms": device.get("period_ms", 1000), "sensors": device.get("sensors", ["sim"])}
        self.config.update(state.get("config") or {})
        self.state["boot"] = state.get("boot", 0) + 1
        self.seq = state.get("seq", 0)  # the last run may have used seqs up to its reservation
        self._reserve()
        self.sensors = {}
        self.errors = {}
        self._make_sensors()
        self.outputs = {}
        self._make_outputs()
        self.links = []
        self.deframer = frame.Deframer()
        self.stop = False
        self.bad_frames = 0

    # -- state -------------------------------------------------------------------------------

    def _reserve(self):
        self.state["seq"] = self.seq + SEQ_BLOCK
        hal.save_json(STATE_FILE, self.state)

    def _make_sensors(self):
        self.sensors = {}
        self.errors = {}
        for name in self.config["sensors"]:
            try:
                self.sensors[name] = sensors.make(name, self.device)
            except (OSError, ImportError, ValueError) as e:
                self.errors[name] = str(e)

    def _make_outputs(self):
        # the outputs this board has, driven to the level the last commands left them at
        for name in OUTPUTS:
            try:
                self.outputs[name] = hal.output(name, self.device.get(name + "_pin"))
            except OSError:
                continue  # commanding it is answered with an error
            level = (self.state.get("outputs") or {}).get(name)
            if level is not None:
                self.outputs[name].value(level)

    # -- uplink ------------------------------------------------------------------------------

    def send(self, frame_type, values):
        payload = _compact(values)
        self.seq += 1
        if self.seq >= self.state["seq"]:
            self._reserve()
        data = frame.encode(frame_type, self.id, self.seq, payload, self.key, self.mac)
        for link in self.links:
            try:
                link.write(data)
            except OSError:
                pass  # a BLE central that went away; the serial link has no one to tell

    def hello(self):
        gc.collect()
        self.send(frame.HELLO, {"fw": FIRMWARE, "board": hal.BOARD, "sensors": list(sensors.AVAILABLE),
                                "period_ms": self.config["period_ms"], "heap_free": gc.mem_free(),
                                "heap_used": gc.mem_alloc(), "boot": self.state["boot"]})

    def reading(self, uptime_s):
        values = {}
        for name, sensor in self.sensors.items():
            try:
                values.update(sensor.read())
            except OSError as e:
                self.errors[name] = str(e)
        if self.errors:
            values["errors"] = self.errors
        values.update(self.state.get("outputs") or {})
        values["up"] = uptime_s
        self.send(frame.READING, values)

    # -- downlink ----------------------------------------------------------------------------

    def feed(self, data):
        for raw in self.deframer.feed(data):
            self.handle(raw)

    def handle(self, raw):
        try:
            frame_type, _, seq, payload = frame.decode(raw, self._key_of, self.mac)
        except frame.FrameError:
            self.bad_frames += 1  # REPL echo, noise, or a frame for another device on the bus
            return
        if frame_type == frame.COMMAND:
            self.command(seq, payload)
            return
        if frame_type != frame.CONFIG:
            return
        if seq <= self.state.get("config_seq", 0):
            return  # an old config played back
        try:
            changes = json.loads(payload)
            new = self._checked(changes)
        except (ValueError, TypeError, KeyError) as e:
            self.state["config_seq"] = seq
            self.send(frame.CONFIG_ACK, {"error": str(e) or "bad config", "config_seq": seq})
            return
        self.state["config_seq"] = seq
        if changes.get("repl"):
            self.stop = True
            self.send(frame.CONFIG_ACK, {"repl": True, "config_seq": seq})
            hal.save_json(STATE_FILE, self.state)
            return
        self.config = new
        self.state["config"] = new
        hal.save_json(STATE_FILE, self.state)
        self._make_sensors()
        self.send(frame.CONFIG_ACK, {"period_ms": new["period_ms"], "sensors": new["sensors"], "config_seq": seq})

    def command(self, seq, payload):
        # set outputs; answered with their state, or an error that changed nothing
        last = self.state.get("command_seq", 0)
        if seq < last or seq == 0:
            return  # an old command played back
        if seq == last:  # the gateway resends a command whose ACK it did not get
            ack = dict(self.state.get("outputs") or {})
            ack["command_seq"] = seq
            ack["repeat"] = True
            self.send(frame.COMMAND_ACK, ack)
            return
        self.state["command_seq"] = seq
        try:
            levels = self._checked_command(json.loads(payload))
            for name in levels:
                self.outputs[name].value(levels[name])
        except (ValueError, TypeError, KeyError, OSError) as e:
            hal.save_json(STATE_FILE, self.state)
            self.send(frame.COMMAND_ACK, {"error": str(e) or "bad command", "command_seq": seq})
            return
        outputs = dict(self.state.get("outputs") or {})
        outputs.update(levels)
        self.state["outputs"] = outputs
        hal.save_json(STATE_FILE, self.state)
        ack = dict(outputs)
        ack["command_seq"] = seq
        self.send(frame.COMMAND_ACK, ack)

    def _checked_command(self, command):
        # every key an output this board has, every value 0 or 1: all or nothing is applied
        if not isinstance(command, dict) or not command:
            raise ValueError("a command is a JSON object naming outputs: " + ",".join(OUTPUTS))
        levels = {}
        for name in command:
            if name not in OUTPUTS:
                raise ValueError("unknown output " + str(name)[:32] + " (" + ",".join(OUTPUTS) + ")")
            if name not in self.outputs:
                raise ValueError("no " + name + " on this board")
            level = command[name]
            if level not in (0, 1) or not isinstance(level, (int, bool)):
                raise ValueError(name + " must be 0 or 1")
            levels[name] = int(level)
        return levels

    def _key_of(self, device_id):
        return self.key if device_id == self.id else None

    def _checked(self, changes):
        new = {"period_ms": self.config["period_ms"], "sensors": list(self.config["sensors"])}
        if "period_ms" in changes:
            period = changes["period_ms"]
            if not isinstance(period, int) or period < MIN_PERIOD_MS:
                raise ValueError("period_ms must be an integer >= %d" % MIN_PERIOD_MS)
            new["period_ms"] = period
        if "sensors" in changes:
            wanted = changes["sensors"]
            if not isinstance(wanted, list) or [s for s in wanted if s not in sensors.AVAILABLE]:
                raise ValueError("sensors must be a list of " + ",".join(sensors.AVAILABLE))
            new["sensors"] = wanted
        return new

    # -- the loop ----------------------------------------------------------------------------

    def run(self, serial_link=None, ble_link=None):
        if serial_link is not None:
            self.links.append(serial_link)
        if ble_link is not None:
            self.links.append(ble_link)
        wdt = hal.watchdog(max(5000, 3 * self.config["period_ms"]))
        start = hal.ticks_ms()
        self.hello()
        due = hal.ticks_add(start, self.config["period_ms"])
        readings = 0
        while not self.stop:
            wdt.feed()
            for link in self.links:
                data = link.read()
                if data:
                    self.feed(data)
            now = hal.ticks_ms()
            if hal.ticks_diff(now, due) >= 0:
                self.reading(hal.ticks_diff(now, start) // 1000)
                readings += 1
                due = hal.ticks_add(due, self.config["period_ms"])
                if hal.ticks_diff(now, due) > 0:  # fell behind (a slow sensor): no burst to catch up
                    due = hal.ticks_add(now, self.config["period_ms"])
                if readings % 16 == 0:
                    gc.collect()
            else:
                hal.sleep_ms(min(5, max(1, hal.ticks_diff(due, now))))
        # leaving for the REPL: the state is saved, the reserved seqs stay spent


def main():
    device = hal.load_json(DEVICE_FILE)
    if device is None:
        print("w3gate-fw: no " + DEVICE_FILE + "; pair this board with `w3gate device pair`")
        return
    state = hal.load_json(STATE_FILE, {}) or {}
    ble_link = None
    if device.get("ble"):
        try:
            from device_fw import ble
            ble_link = ble.Peripheral(device.get("name") or "w3-sensor")
        except ImportError:  # a board (or the unix port) without the bluetooth module
            print("w3gate-fw: no bluetooth on " + hal.BOARD + "; serving the serial link only")
        if ble_link is not None and not (device.get("id") and device.get("key")):
            device = ble_link.wait_for_identity(device, DEVICE_FILE)
            state = {}
    if not (device.get("id") and device.get("key")):
        print("w3gate-fw: " + DEVICE_FILE + " has no identity; pair this board with `w3gate device pair`")
        return
    spec = device.get("link", "stdio")
    serial_link = hal.open_link(spec) if spec else None
    firmware = Firmware(device, state)
    try:
        firmware.run(serial_link, ble_link)
    finally:
        hal.release_link(spec)
        if ble_link is not None and firmware.stop:
            ble_link.forget(DEVICE_FILE)  # back to waiting for an identity (w3gate device pair --replace)
