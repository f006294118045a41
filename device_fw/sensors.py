# Sensors: each has a name and read() -> dict of values (degC, %RH, hPa). A sensor that fails
# to read raises OSError; the app reports it in the reading ("errors") and goes on.

import math
import struct

from device_fw import hal

AVAILABLE = ("sim", "bme280", "dht22")


class Simulated:
    # Drifting values for benches: a day-like temperature swing, humidity against it, pressure
    # wandering slowly; seedable so a bench run can be repeated.
    name = "sim"

    def __init__(self, seed=1):
        self.state = (seed * 2654435761) & 0xFFFFFFFF or 1
        self.t0 = hal.ticks_ms()

    def _noise(self):
        # xorshift32: the same sequence on every port, no random module needed
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return (x & 0xFFFF) / 65535.0 - 0.5

    def read(self):
        minutes = hal.ticks_diff(hal.ticks_ms(), self.t0) / 60000.0
        swing = math.sin(minutes / 10.0)
        return {"temperature": round(21.0 + 3.0 * swing + 0.2 * self._noise(), 2),
                "humidity": round(45.0 - 8.0 * swing + 0.5 * self._noise(), 1),
                "pressure": round(1013.25 + 2.0 * math.sin(minutes / 37.0) + 0.1 * self._noise(), 2)}


class BME280:
    # Bosch BME280 over I2C, forced mode (one measurement per read: the sensor sleeps between).
    # Compensation: the datasheet's floating-point formulas (BST-BME280-DS002, section 8.1).
    name = "bme280"

    def __init__(self, i2c, address=0x76):
        self.i2c = i2c
        self.address = address
        chip = self.i2c.readfrom_mem(address, 0xD0, 1)[0]
        if chip != 0x60:
            raise OSError("no BME280 at 0x%02x (chip id 0x%02x)" % (address, chip))
        c = self.i2c.readfrom_mem(address, 0x88, 26)
        self.T = struct.unpack("<Hhh", c[0:6])
        self.P = struct.unpack("<Hhhhhhhhh", c[6:24])
        h = self.i2c.readfrom_mem(address, 0xE1, 7)
        self.H1 = c[25]
        self.H2 = struct.unpack("<h", h[0:2])[0]
        self.H3 = h[2]
        self.H4 = (h[3] << 4) | (h[4] & 0x0F)
        if self.H4 & 0x800:
            self.H4 -= 0x1000
        self.H5 = (h[5] << 4) | (h[4] >> 4)
        if self.H5 & 0x800:
            self.H5 -= 0x1000
        self.H6 = struct.unpack("<b", h[6:7])[0]
        self.i2c.writeto_mem(address, 0xF2, b"\x01")  # humidity oversampling x1

    def read(self):
        self.i2c.writeto_mem(self.address, 0xF4, b"\x25")  # temp x1, pressure x1, forced mode
        for _ in range(20):
            hal.sleep_ms(2)
            if not self.i2c.readfrom_mem(self.address, 0xF3, 1)[0] & 0x08:
                break
        d = self.i2c.readfrom_mem(self.address, 0xF7, 8)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        t1, t2, t3 = self.T
        v1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
        v2 = (adc_t / 131072.0 - t1 / 8192.0) ** 2 * t3
        t_fine = v1 + v2
        temperature = t_fine / 5120.0
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self.P
        v1 = t_fine / 2.0 - 64000.0
        v2 = v1 * v1 * p6 / 32768.0 + v1 * p5 * 2.0
        v2 = v2 / 4.0 + p4 * 65536.0
        v1 = (p3 * v1 * v1 / 524288.0 + p2 * v1) / 524288.0
        v1 = (1.0 + v1 / 32768.0) * p1
        pressure = 0.0
        if v1:
            p = 1048576.0 - adc_p
            p = (p - v2 / 4096.0) * 6250.0 / v1
            v1 = p9 * p * p / 2147483648.0
            v2 = p * p8 / 32768.0
            pressure = p + (v1 + v2 + p7) / 16.0
        h = t_fine - 76800.0
        h = ((adc_h - (self.H4 * 64.0 + self.H5 / 16384.0 * h)) *
             (self.H2 / 65536.0 * (1.0 + self.H6 / 67108864.0 * h * (1.0 + self.H3 / 67108864.0 * h))))
        h = h * (1.0 - self.H1 * h / 524288.0)
        humidity = min(100.0, max(0.0, h))
        return {"temperature": round(temperature, 2), "humidity": round(humidity, 1),
                "pressure": round(pressure / 100.0, 2)}


class DHT22:
    # The AM2302/DHT22 single-wire sensor, through MicroPython's built-in dht driver. It needs
    # two seconds between reads; a faster period gets the last values again.
    name = "dht22"

    def __init__(self, pin):
        import dht
        self.sensor = dht.DHT22(hal.pin(pin))
        self.last = None
        self.at = 0

    def read(self):
        now = hal.ticks_ms()
        if self.last is None or hal.ticks_diff(now, self.at) >= 2000:
            self.sensor.measure()
            self.last = {"temperature": self.sensor.temperature(), "humidity": self.sensor.humidity()}
            self.at = now
        return self.last


def make(name, device):
    # the sensor called ``name``, wired as device.json says ({"i2c": {...}, "dht_pin": n})
    if name == "sim":
        return Simulated(device.get("sim_seed", 1))
    if name == "bme280":
        return BME280(hal.i2c(device.get("i2c") or {"id": 0, "scl": 22, "sda": 21}), device.get("bme280_address", 0x76))
    if name == "dht22":
        return DHT22(device.get("dht_pin", 4))
    raise OSError("unknown sensor " + name)
