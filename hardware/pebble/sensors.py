"""Sensor models of an emulated Pebble, and the firmware's scaling of their readings.

``SensorModel.read(t)`` gives what the chips report at (simulated) time ``t``: a GPS track, the
BME680 with its self-heating, the TSL2572, the ICM IMU, the battery and the modem's RSRQ.
``sensor_data()`` then turns a reading into the integers Riverrock puts in SensorData (x100
scalings, 10 mV battery units, GPS rounding and no-fix sentinel, humidity x1.1 clamped, 2.5 degC
self-heating removed: docs/pebble-wire.md, "SensorData"), and ``g1_fields()`` into the G1 JSON
values.

Models are seedable (same seed, same readings) and cheap: a bench generates 100k readings in
about a second.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hardware.pebble.encoding import NO_FIX, SensorData, float32
from hardware.pebble.firmware import (CH_ACCEL, CH_GAS, CH_GPS, CH_GYRO, CH_HUMIDITY, CH_LIGHT, CH_PRESSURE,
                                      CH_SNR, CH_TEMP, CH_TEMP2, CH_VBAT)

SELF_HEATING_C = 2.5  # subtracted by the firmware (bme680_helper.c)
HUMIDITY_GAIN = 1.1  # the firmware multiplies the BME680 humidity by 1.1, clamped at 100 %
ACCEL_COUNTS_PER_G = 8192
EARTH_RADIUS_M = 6_371_000.0

# Where emulated trackers start: (latitude, longitude). Two are the real samples' places.
PLACES = ((49.92, -97.19), (27.91, -82.78), (22.30, 114.17), (52.52, 13.40), (-23.55, -46.63),
          (-1.29, 36.82), (-33.87, 151.21), (40.71, -74.01), (35.68, 139.69), (48.14, 11.58))

# Movement modes: (name, mean speed m/s, share of devices)
MODES = (("parked", 0.0, 0.35), ("walking", 1.4, 0.25), ("cycling", 5.0, 0.15), ("driving", 14.0, 0.25))


@dataclass(frozen=True)
class Sample:
    """One reading, in the units the sensors report (before the firmware's corrections)."""

    time: float  # simulated unix seconds
    rsrq_index: int  # AT+CESQ 5th field, 0..34
    vbat_v: float  # battery volts
    latitude: float | None  # degrees; None = no fix
    longitude: float | None
    gas_ohm: float  # BME680 gas resistance
    bme_temperature_c: float  # BME680 temperature, self-heating included
    pressure_hpa: float
    bme_humidity_pct: float  # BME680 relative humidity, before the firmware's x1.1
    light_lux: float
    gyroscope: tuple[int, int, int]  # raw counts
    accelerometer: tuple[int, int, int]  # raw counts (8192 per g)
    imu_temperature_c: float  # used by G1 as temperature2

    @property
    def temperature_c(self) -> float:
        """The temperature the firmware reports: the BME680 value minus self-heating."""
        return self.bme_temperature_c - SELF_HEATING_C

    @property
    def humidity_pct(self) -> float:
        """The humidity the firmware reports: x1.1, clamped at 100 %."""
        return min(self.bme_humidity_pct * HUMIDITY_GAIN, 100.0)


class SensorModel:
    """A tracker's environment and motion. ``seed`` makes it reproducible; ``None`` is random."""

    def __init__(self, seed: int | str | None = None) -> None:
        rng = self.rng = random.Random(seed)
        lat, lon = rng.choice(PLACES)
        self.lat = lat + rng.uniform(-0.2, 0.2)
        self.lon = lon + rng.uniform(-0.2, 0.2)
        self.heading = rng.uniform(0, 360)
        r, acc = rng.random(), 0.0
        for name, speed, share in MODES:
            acc += share
            if r < acc:
                break
        self.mode, self.speed_mean = name, speed
        self.no_fix_rate = rng.uniform(0.01, 0.08)
        self.indoor = rng.random() < 0.5
        # Climate: warmer near the equator; a per-device offset and a daily swing.
        self.base_temperature = 27.0 - 0.35 * abs(self.lat) + rng.uniform(-3, 3)
        self.daily_swing = rng.uniform(3, 7)
        self.base_humidity = rng.uniform(35, 65)
        self.sea_level_hpa = 1013.25 - rng.uniform(0, 400) / 8.3  # altitude 0..400 m
        self.weather_hpa = rng.uniform(-8, 8)
        self.gas_log = math.log(rng.uniform(20_000, 120_000))
        self.battery_v = rng.uniform(3.9, 4.2)
        self.drain_v_per_h = rng.uniform(0.002, 0.006)
        self.rsrq_base = rng.randint(10, 24)
        self.rsrq = self.rsrq_base
        self.gravity_axis_sign = rng.choice((1, -1)) if self.mode != "parked" else 1
        self._t: float | None = None

    # -- the model -------------------------------------------------------------------------------

    def read(self, t: float) -> Sample:
        """The reading at simulated time ``t`` (seconds); state advances by the time since the
        previous reading, so call it with increasing times."""
        rng = self.rng
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        self._t = t
        steps = dt / 300.0  # random walks are scaled to the default 5-minute period

        moving = self.speed_mean > 0
        if moving:
            self.heading = (self.heading + rng.gauss(0, 25)) % 360
            speed = max(0.0, rng.gauss(self.speed_mean, self.speed_mean * 0.3))
            self._move(speed * dt)
        fix = rng.random() >= self.no_fix_rate
        jitter = 3e-5  # ~3 m of GPS noise
        lat = self.lat + rng.gauss(0, jitter) if fix else None
        lon = self.lon + rng.gauss(0, jitter) if fix else None

        hour = ((t / 3600.0) + self.lon / 15.0) % 24  # local solar time
        ambient = (self.base_temperature + self.daily_swing * math.cos(2 * math.pi * (hour - 15) / 24)
                   + rng.gauss(0, 0.15))
        bme_temperature = ambient + SELF_HEATING_C + rng.gauss(0, 0.05)
        humidity = self.base_humidity - 2.0 * (ambient - self.base_temperature) + rng.gauss(0, 1.5)
        humidity = min(max(humidity, 5.0), 100.0)

        self.weather_hpa += rng.gauss(0, 0.4) * math.sqrt(steps) - 0.02 * self.weather_hpa * steps
        self.weather_hpa = min(max(self.weather_hpa, -30.0), 25.0)
        pressure = self.sea_level_hpa + self.weather_hpa + rng.gauss(0, 0.05)

        self.gas_log += rng.gauss(0, 0.05) * math.sqrt(steps)
        self.gas_log = min(max(self.gas_log, math.log(5_000)), math.log(500_000))
        gas = math.exp(self.gas_log + rng.gauss(0, 0.01))

        sun = math.sin(math.pi * (hour - 6) / 12) if 6 <= hour <= 18 else 0.0
        peak = rng.uniform(200, 800) if self.indoor else rng.uniform(8_000, 50_000)
        light = max(0.0, sun * peak * rng.uniform(0.6, 1.0))

        shake = 150 if moving else 20
        g = ACCEL_COUNTS_PER_G * self.gravity_axis_sign
        accel = (round(rng.gauss(0, shake)), round(g + rng.gauss(0, shake)), round(rng.gauss(0, shake)))
        spin = 40 if moving else 4
        gyro = (round(rng.gauss(0, spin)), round(rng.gauss(0, spin)), round(rng.gauss(0, spin)))

        self.battery_v -= self.drain_v_per_h * dt / 3600.0
        if self.battery_v < 3.45:  # the owner plugs it in
            self.battery_v = rng.uniform(4.1, 4.2)
        vbat = self.battery_v + rng.gauss(0, 0.005)

        if rng.random() < 0.3:
            self.rsrq = min(34, max(0, self.rsrq + rng.choice((-2, -1, 1, 2))))
        self.rsrq += int((self.rsrq_base - self.rsrq) / 4)  # drift back to the cell's usual level

        return Sample(t, self.rsrq, vbat, lat, lon, gas, bme_temperature, pressure, humidity, light,
                      gyro, accel, ambient + 4.0 + rng.gauss(0, 0.2))

    def _move(self, distance_m: float) -> None:
        heading = math.radians(self.heading)
        dlat = math.degrees(distance_m * math.cos(heading) / EARTH_RADIUS_M)
        coslat = max(math.cos(math.radians(self.lat)), 0.01)
        dlon = math.degrees(distance_m * math.sin(heading) / (EARTH_RADIUS_M * coslat))
        self.lat += dlat
        if abs(self.lat) > 85:  # turn back rather than cross a pole
            self.lat = math.copysign(170, self.lat) - self.lat
            self.heading = (180 - self.heading) % 360
        self.lon = (self.lon + dlon + 180) % 360 - 180


# -- firmware scaling ---------------------------------------------------------------------------


def gps_raw(degrees: float | None, precise: bool) -> int:
    """Degrees x 1e7; rounded to 0.01 degree unless preciseGPS; 2000000000 without a fix."""
    if degrees is None:
        return NO_FIX
    if precise:
        return round(degrees * 1e7)
    return round(degrees * 100) * 100_000


def sensor_data(sample: Sample, *, channels: int, precise_gps: bool, temperature_encoding: str,
                nonce: str) -> SensorData:
    """The SensorData Riverrock builds from a reading: only the channels in the mask; gyroscope
    and accelerometer always present (zeros when their bit is clear); random always present."""

    def on(bit: int) -> bool:
        return bool(channels & bit)

    temperature = round(sample.temperature_c * 100)
    return SensorData(
        snr=sample.rsrq_index * 100 if on(CH_SNR) else None,
        vbat=round(sample.vbat_v * 100) if on(CH_VBAT) else None,
        latitude=gps_raw(sample.latitude, precise_gps) if on(CH_GPS) else None,
        longitude=gps_raw(sample.longitude, precise_gps) if on(CH_GPS) else None,
        gas_resistance=round(sample.gas_ohm * 100) if on(CH_GAS) else None,
        temperature=temperature if on(CH_TEMP) else None,
        pressure=round(sample.pressure_hpa * 100) if on(CH_PRESSURE) else None,
        humidity=round(sample.humidity_pct * 100) if on(CH_HUMIDITY) else None,
        light=round(sample.light_lux * 100) if on(CH_LIGHT) else None,
        temperature2=temperature if on(CH_TEMP2) else None,
        gyroscope=sample.gyroscope if on(CH_GYRO) else (0, 0, 0),
        accelerometer=sample.accelerometer if on(CH_ACCEL) else (0, 0, 0),
        random=nonce,
        temperature_encoding=temperature_encoding,
    )


G1_NO_FIX = 20000  # the "no GPS" value of the 2021 data-spec JSON (test vector C)


def g1_fields(sample: Sample, *, channels: int, timestamp: int, nonce: str) -> dict:
    """The G1 message object's fields, in the firmware's key order (the 2021 data-spec names).
    Floats are float32, as the device's are; vbat in mV; temperature2 is the IMU temperature."""

    def on(bit: int) -> bool:
        return bool(channels & bit)

    fields: dict = {}
    if on(CH_SNR):
        fields["snr"] = sample.rsrq_index
    if on(CH_VBAT):
        fields["vbat"] = round(sample.vbat_v * 1000)
    if on(CH_GPS):
        fix = sample.latitude is not None
        fields["latitude"] = float32(sample.latitude) if fix else G1_NO_FIX
        fields["longitude"] = float32(sample.longitude) if fix else G1_NO_FIX
    if on(CH_GAS):
        fields["gasResistance"] = round(sample.gas_ohm)
    if on(CH_TEMP):
        fields["temperature"] = float32(sample.temperature_c)
    if on(CH_PRESSURE):
        fields["pressure"] = round(sample.pressure_hpa)
    if on(CH_HUMIDITY):
        fields["humidity"] = float32(sample.humidity_pct)
    if on(CH_LIGHT):
        fields["light"] = round(sample.light_lux)
    if on(CH_TEMP2):
        fields["temperature2"] = float32(sample.imu_temperature_c)
    if on(CH_GYRO):
        fields["gyroscope"] = list(sample.gyroscope)
    if on(CH_ACCEL):
        fields["accelerometer"] = list(sample.accelerometer)
    fields["timestamp"] = str(timestamp)
    fields["random"] = nonce
    return fields
