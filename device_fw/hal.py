# Hardware abstraction: the firmware asks for a link, a clock, a watchdog, storage and buses;
# what answers depends on where it runs. On a board (ESP32, Pico W) the real `machine` classes;
# on the MicroPython unix port (benches) the pty on stdio or a path, and stand-ins where the
# unix port has nothing (no UART, I2C, WDT: platform-notes section 6).

import json
import sys
import time

try:
    import machine
except ImportError:  # CPython, when a test imports this module
    machine = None

try:
    import select
except ImportError:
    select = None

BOARD = sys.platform  # "esp32", "rp2", "linux" (unix port) ...
ON_BOARD = machine is not None and hasattr(machine, "UART")


def ticks_ms():
    return time.ticks_ms()


def ticks_diff(a, b):
    return time.ticks_diff(a, b)


def ticks_add(a, b):
    return time.ticks_add(a, b)


def sleep_ms(ms):
    time.sleep_ms(ms)


class StreamLink:
    # A byte stream the firmware writes frames to and reads config from: the REPL's stdio (a
    # board's USB port, or the pty the bench gives the unix port) or a file path (a tty).

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.poller = select.poll()
        self.poller.register(reader, select.POLLIN)

    def read(self, limit=256):
        # the bytes waiting now, without blocking: one byte per read, as MicroPython's stream
        # read() waits for all it was asked for; config frames are short and rare
        out = b""
        while len(out) < limit and self.poller.poll(0):
            b = self.reader.read(1)
            if not b:
                break
            out += b
        return out

    def write(self, data):
        # no flush(): it raises EINVAL on a tty under the unix port, and writes go out at once
        self.writer.write(data)


class UartLink:
    def __init__(self, uart):
        self.uart = uart

    def read(self, limit=256):
        n = self.uart.any()
        return self.uart.read(min(n, limit)) if n else b""

    def write(self, data):
        self.uart.write(data)


def open_link(spec):
    # "stdio" | "uart:<n>:<baud>:<tx pin>:<rx pin>" | a path (a tty on the unix port)
    if spec == "stdio":
        try:
            import micropython
            micropython.kbd_intr(-1)  # 0x03 inside a frame must not raise KeyboardInterrupt
        except (ImportError, AttributeError):
            pass
        return StreamLink(sys.stdin.buffer, sys.stdout.buffer)
    if spec.startswith("uart:"):
        if not ON_BOARD:
            raise OSError("no UART on " + BOARD)
        parts = [int(p) for p in spec.split(":")[1:]]
        n, baud = parts[0], parts[1] if len(parts) > 1 else 115200
        if len(parts) >= 4:
            uart = machine.UART(n, baudrate=baud, tx=machine.Pin(parts[2]), rx=machine.Pin(parts[3]))
        else:
            uart = machine.UART(n, baudrate=baud)
        return UartLink(uart)
    f = open(spec, "r+b")
    return StreamLink(f, f)


def release_link(spec):
    # give Ctrl-C back to the REPL (the firmware is leaving)
    if spec == "stdio":
        try:
            import micropython
            micropython.kbd_intr(3)
        except (ImportError, AttributeError):
            pass


class _NoWatchdog:
    def feed(self):
        pass


def watchdog(timeout_ms):
    # A hung loop resets a board; the unix port has no WDT (a bench sees the hang instead).
    if ON_BOARD and hasattr(machine, "WDT"):
        return machine.WDT(timeout=max(1000, min(timeout_ms, 8388)))  # rp2 caps at 8388 ms
    return _NoWatchdog()


def i2c(spec):
    # {"id": 0, "scl": 22, "sda": 21, "freq": 100000}
    if not ON_BOARD:
        raise OSError("no I2C on " + BOARD)
    return machine.I2C(spec.get("id", 0), scl=machine.Pin(spec["scl"]), sda=machine.Pin(spec["sda"]),
                       freq=spec.get("freq", 100000))


def pin(n):
    if not ON_BOARD:
        raise OSError("no GPIO on " + BOARD)
    return machine.Pin(n)


class FileOutput:
    # A digital output on the unix port, which has no GPIO: its level ("0" or "1") is kept in a
    # file in the working directory, where a bench reads what the firmware drove.

    def __init__(self, path):
        self.path = path

    def value(self, level):
        with open(self.path, "w") as f:
            f.write(str(level))


def output(name, pin_no=None):
    # A digital output the gateway may command (a relay's driver): machine.Pin(pin, OUT) on a
    # board, where device.json names the pin ("relay_pin"); "<name>.out" on the unix port.
    if not ON_BOARD:
        return FileOutput(name + ".out")
    if pin_no is None:
        raise OSError("no " + name + " on this board (device.json has no " + name + "_pin)")
    return machine.Pin(pin_no, machine.Pin.OUT)


def unique_id():
    if ON_BOARD and hasattr(machine, "unique_id"):
        return machine.unique_id()
    return b""


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save_json(path, value):
    # write then rename: a power cut leaves the old file or the new one
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    try:
        import os
        os.rename(tmp, path)
    except OSError:
        pass


def reset():
    if ON_BOARD:
        machine.reset()
