"""The dashboard in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by selenium) opens the pages of a real `w3gate run` fed by emulated Pebbles over MQTT
(`w3gate sim pebble`) and an emulated legacy sensor on a serial line (a socat pty, frames made
by the shared frame codec as the firmware makes them), with anchoring on a real anvil chain and
the demo's applets (applets/demo.toml) running on every reading.

It checks what a user sees: every device listed, a hostile device name shown as text (never
markup), the plots and the GPS track gaining points as readings arrive over server-sent events
without a reload, the applets' event rate and log tail, rejections appearing live, a record's proof one click away, no error in the
browser's console (a Content-Security-Policy violation would be one), and a phone-width page
that does not scroll sideways. Screenshots (desktop and a 390 px phone) are saved in the test's
temporary folder.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import pytest

from device_fw import frame as wire
from gateway.legacy.registry import LegacyRegistry, new_legacy_device
from tests.hil.test_metrics import dashboard_url
from tests.hil.test_serial_bridge import Cable
from tests.support.gateway import chain_gateway, cli, sim, w3gate_exe

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    import selenium
except ImportError:  # pragma: no cover - said in the skip reason
    selenium = None

pytestmark = [
    pytest.mark.skipif(selenium is None, reason="selenium is missing: pip install -e '.[test]' (./dev.sh setup)"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="chromium and chromedriver are missing: apt-get install chromium chromium-driver "
                              "(./dev.sh setup installs them)"),
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat is installed by ./dev.sh setup"),
]

# A name a user (or an attacker with pairing access) could give: markup, an event handler, a
# right-to-left override. Shown as text it is harmless; parsed as HTML it would set the title.
HOSTILE_NAME = '<img src=x onerror="document.title=\'pwned\'">greenhouse\u202e'
WAIT_S = 30.0


class LegacySensor(threading.Thread):
    """An emulated serial sensor: a reading every ``period`` seconds on the device's end of the
    cable, as device_fw sends it (HELLO first, then READING frames with growing seqs)."""

    def __init__(self, cable: Cable, device, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.cable, self.device, self.period = cable, device, period
        self.stopping = threading.Event()
        self.sent = 0

    def frame(self, kind: int, seq: int, values: dict) -> bytes:
        return wire.encode(kind, bytes.fromhex(self.device.device_id), seq, json.dumps(values).encode(),
                           self.device.key_bytes)

    def run(self) -> None:
        port = self.cable.device()
        try:
            port.write(self.frame(wire.HELLO, 1, {"fw": "w3gate-fw 0.1 <b>bold</b>", "board": "emulated",
                                                  "sensors": ["sim"]}))
            seq = 2
            while not self.stopping.wait(self.period):
                minute = seq / 10
                port.write(self.frame(wire.READING, seq, {"temperature": round(20 + 3 * (minute % 2), 2),
                                                          "humidity": round(40 + seq % 7, 1),
                                                          "pressure": round(1013 + (seq % 5) / 10, 2)}))
                self.sent += 1
                seq += 1
        finally:
            port.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


@pytest.fixture
def fleet(tmp_path, mosquitto):
    fleet_dir = tmp_path / "fleet"
    sim(mosquitto, fleet_dir, "--count", "4", "--profile", "mixed", "--duration", "0.2")
    return fleet_dir


@pytest.fixture
def site(tmp_path, mosquitto, anvil, fleet, built_applets):
    """A gateway with anchoring and the demo's applets, four Pebbles publishing a reading a second
    each, and a legacy sensor (hostile name) on a serial cable; yields (gateway, sensor device,
    the running sensor)."""
    by_id = tmp_path / "serial" / "by-id"
    gw, _registry, _identity, _ = chain_gateway(
        tmp_path, mosquitto, anvil, chain__batch_records=20, chain__batch_age_s=1.0,
        serial__ports=[str(by_id / "usb-*")], serial__rescan_s=0.2, legacy__rate=100.0, legacy__burst=100)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    cli("project", "deploy", str(built_applets.parent / "demo.toml"), data_dir=gw.data_dir)
    device = new_legacy_device(HOSTILE_NAME, transport="serial")
    LegacyRegistry(gw.data_dir / "legacy_devices.json").add(device)
    cable = Cable(by_id, "greenhouse").plug()
    gw.start()
    gw.wait_for(lambda s: (s.get("legacy") or {}).get("serial", {}).get("ports"), what="the serial port opened")
    sensor = LegacySensor(cable, device)
    sensor.start()
    pebbles = subprocess.Popen([*w3gate_exe(), "sim", "pebble", "--broker", mosquitto.url, "--fleet-dir", str(fleet),
                                "--time-scale", "60", "--period", "60", "--qos", "1", "--duration", "120", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield gw, device, sensor
    finally:
        pebbles.terminate()
        pebbles.wait(10)
        sensor.stop()
        gw.stop()
        if cable.proc.poll() is None:
            cable.unplug()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--lang=en-GB"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, predicate, what: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d))
    except Exception as e:
        raise AssertionError(f"timed out waiting for {what}; the page says:\n"
                             f"{driver.find_element('tag name', 'body').text[:3000]}") from e


def plot_points(driver, element_id: str) -> int:
    return int(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.dataset.points ? +e.dataset.points : 0;",
        element_id))


def click(driver, css: str) -> None:
    """Click what ``css`` finds, as a user would; the page updates every second, so a row found
    just before an update may have to be found again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(5):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept changing under the click")


def screenshot(driver, path, width: int) -> None:
    """The whole page at ``width`` CSS pixels (the window as tall as the page)."""
    driver.set_window_size(width, 900)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    for _ in range(3):  # the page may grow as the window does (a wider table, a longer log)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(height + 100, 12000))
        time.sleep(0.3)
    assert driver.save_screenshot(str(path))


def phone_screens(driver, tmp_path, screens: int = 4) -> None:
    """What a 390 px phone shows, screen by screen from the top (dashboard-phone-<n>.png), and the
    whole page (dashboard-phone.png)."""
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    for n in range(1, screens + 1):
        driver.execute_script("window.scrollTo(0, arguments[0])", (n - 1) * 800)
        time.sleep(0.3)
        assert driver.save_screenshot(str(tmp_path / f"dashboard-phone-{n}.png"))
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": min(height, 8000)})
    time.sleep(0.5)
    assert driver.save_screenshot(str(tmp_path / "dashboard-phone.png"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def test_devices_appear_plots_grow_live_and_a_proof_is_one_click_away(site, browser, mosquitto, tmp_path):
    from selenium.webdriver.common.by import By

    gw, device, _sensor = site
    url = dashboard_url(gw)
    gw.wait_for(lambda s: s["accepted"].get("data", 0) >= 4 and s["accepted"].get("legacy_data", 0) >= 2,
                what="readings from the Pebbles and the sensor")
    browser.get(url + "/")
    browser.execute_script("window.__loaded_once = true")  # gone if the page ever reloads
    wait_until(browser, lambda d: d.find_element(By.ID, "live").text == "live", "the live stream")

    # every device appears: four Pebbles (IMEIs) and the legacy sensor under its name, as text
    imeis = [d["imei"] for d in json.loads((tmp_path / "fleet" / "devices.json").read_text())]
    rows = lambda d: d.execute_script(  # one read of the table, as it is at that moment
        "return Object.fromEntries([...document.querySelectorAll('#devices tbody tr[data-device]')]"
        ".map((r) => [r.dataset.device, r.innerText]))")
    wait_until(browser, lambda d: set(imeis) | {device.device_id} <= set(rows(d)), "every device listed")
    legacy_row = rows(browser)[device.device_id]
    assert HOSTILE_NAME.replace("\u202e", "") in legacy_row.replace("\u202e", "")
    assert "gateway-attested" in legacy_row and "paired" in legacy_row
    assert browser.find_elements(By.CSS_SELECTOR, "#devices img, main img") == []  # the name stayed text
    assert browser.title == "w3gate"  # its onerror never ran
    wait_until(browser, lambda d: "w3gate-fw 0.1 <b>bold</b>" in rows(d)[device.device_id], "the sensor's firmware")
    for imei in imeis:
        assert "secure-element" in rows(browser)[imei]

    # the legacy sensor's temperature plot gains points as readings arrive, without a reload
    click(browser, f'#devices tr[data-device="{device.device_id}"]')
    wait_until(browser, lambda d: plot_points(d, "#plot-temperature svg") >= 3, "the sensor's temperature plot")
    before = plot_points(browser, "#plot-temperature svg")
    wait_until(browser, lambda d: plot_points(d, "#plot-temperature svg") >= before + 3, "new points on the plot")
    assert plot_points(browser, "#plot-humidity svg") >= before + 3
    assert plot_points(browser, "#plot-battery svg") == 0  # the sensor has no battery: "no data", no line
    assert browser.find_element(By.CSS_SELECTOR, "#plot-temperature svg path.line")

    # a Pebble: four plots and its GPS track, growing too
    imei = imeis[0]
    click(browser, f'#devices tr[data-device="{imei}"]')
    wait_until(browser, lambda d: plot_points(d, "#track") >= 2 and plot_points(d, "#plot-battery svg") >= 2,
               "the Pebble's track and battery plot")
    track = plot_points(browser, "#track")
    wait_until(browser, lambda d: plot_points(d, "#track") > track, "the GPS track growing")
    assert browser.find_element(By.CSS_SELECTOR, "#track path.track").get_attribute("d").count("L") >= track - 1
    assert browser.find_element(By.ID, "device-select").get_attribute("value") == imei

    # the demo's applets: their events counted, their rate, and the tail of their log, as text
    project = '#applets [data-project="pebble-demo"]'
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, project + " ol.log li"), "the applets' log")
    wait_until(browser, lambda d: "/s" in d.find_element(By.CSS_SELECTOR, project).text
               and " 0.0/s" not in d.find_element(By.CSS_SELECTOR, project + " dd").text, "the applets' event rate")
    assert "pebble-validator" in browser.find_element(By.CSS_SELECTOR, project + " ol.log").text

    # forged readings show up as rejections while the page is open
    sim(mosquitto, tmp_path / "fleet", "--messages", "1", "--time-scale", "300", "--qos", "1",
        "--faults", "bad_signature=1")
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#rejections [data-reason="bad_signature"]'),
               "the bad signatures counted on the page")
    wait_until(browser, lambda d: any("bad_signature" in td.text for td in
                                      d.find_elements(By.CSS_SELECTOR, "#devices td.rejected")),
               "the bad signatures on the row of the device they claimed to be from")

    # anchoring: batches listed, and a record's proof one click away
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#batches td.state-anchored"), "an anchored batch")
    click(browser, "#batches tr:has(td.state-anchored) button.link")
    wait_until(browser, lambda d: "anchored in block" in d.find_element(By.ID, "proof-summary").text,
               "the proof of an anchored record")
    proof = json.loads(browser.find_element(By.ID, "proof-json").text)
    assert proof["format"] == "w3gate-proof/1" and proof["anchor"]["tx"].startswith("0x") and proof["path"] is not None
    assert browser.execute_script("return window.__loaded_once === true")  # all of it live, no reload

    screenshot(browser, tmp_path / "dashboard-desktop.png", 1280)
    # a phone: one column, nothing wider than the screen
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    browser.get(url + "/")
    wait_until(browser, lambda d: d.find_element(By.ID, "live").text == "live", "the live stream on the phone")
    wait_until(browser, lambda d: plot_points(d, "#plot-temperature svg") >= 2, "plots on the phone")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the phone page is {overflow} px wider than the screen"
    phone_screens(browser, tmp_path)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    # the gateway stops as promptly with a page open (its stream ends), and the page says so
    began = time.monotonic()
    assert gw.stop() == 0
    assert time.monotonic() - began < 10, gw.log_text()[-2000:]
    wait_until(browser, lambda d: d.find_element(By.ID, "live").text != "live", "the page noticing the stop")
    assert "Traceback" not in gw.log_text()
    print(f"screenshots: {sorted(str(p) for p in tmp_path.glob('dashboard-*.png'))}")

