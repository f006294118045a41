// geofence-alert: publishes an MQTT alert when a Pebble with a GPS fix leaves
// a circle, once per exit. See README.md for env keys, KV keys and return codes.

import { GetDataByRID, GetDB, JSONEncoder, Log, SetDB } from "@w3bstream/wasm-sdk";
import { LEVEL_ERROR, LEVEL_WARN, boolOf, envOr, fmt, logAt, numberOf, sendMqtt } from "../lib/host";
import { parseReading } from "../lib/pebble";

export { alloc } from "@w3bstream/wasm-sdk";

const OK: i32 = 0;           // processed (alert sent or not needed)
const BAD_PAYLOAD: i32 = 2;  // not a Pebble reading
const PUBLISH_FAILED: i32 = 3; // ws_send_mqtt_msg failed; state kept "in", so the next reading retries
const BAD_CONFIG: i32 = 4;   // GEOFENCE_LAT/LON/RADIUS_M missing or not numbers

const EARTH_RADIUS_M: f64 = 6371008.8; // mean Earth radius (IUGG)

// Great-circle distance in metres between two WGS84 points, haversine formula.
function haversine(lat1: f64, lon1: f64, lat2: f64, lon2: f64): f64 {
  const rad: f64 = Math.PI / 180.0;
  const dLat = (lat2 - lat1) * rad;
  const dLon = (lon2 - lon1) * rad;
  const s = Math.sin(dLat / 2.0);
  const t = Math.sin(dLon / 2.0);
  const a = s * s + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * t * t;
  return 2.0 * EARTH_RADIUS_M * Math.asin(Math.min(1.0, Math.sqrt(a)));
}

function envNumber(key: string): f64 {
  const v = envOr(key, "");
  return v.length == 0 ? NaN : parseFloat(v);
}

export function start(rid: i32): i32 {
  const reading = parseReading(GetDataByRID(rid));
  if (reading == null) {
    logAt(LEVEL_WARN, "geofence-alert: rid " + rid.toString() + ": payload is not a Pebble reading");
    return BAD_PAYLOAD;
  }
  const device = reading.device;
  const data = reading.data;
  const lat = numberOf(data, "latitude");
  const lon = numberOf(data, "longitude");
  // No fix, no position: nothing to decide. gps_fix absent counts as a fix if coordinates are there.
  if (!boolOf(data, "gps_fix", true) || isNaN(lat) || isNaN(lon)) return OK;

  const centreLat = envNumber("GEOFENCE_LAT");
  const centreLon = envNumber("GEOFENCE_LON");
  const radius = envNumber("GEOFENCE_RADIUS_M");
  if (isNaN(centreLat) || isNaN(centreLon) || isNaN(radius) || radius <= 0) {
    logAt(LEVEL_ERROR, "geofence-alert: set GEOFENCE_LAT, GEOFENCE_LON and GEOFENCE_RADIUS_M (> 0) in the project env");
    return BAD_CONFIG;
  }

  const distance = haversine(centreLat, centreLon, lat, lon);
  const outside = distance > radius;
  const key = "geofence:" + device;
  const prev = GetDB(key);
  // Unknown devices count as inside, so a device first seen outside alerts once.
  const wasOutside = prev != null && String.UTF8.decode(prev) == "out";

  if (outside && !wasOutside) {
    const e = new JSONEncoder();
    e.pushObject(null);
    e.setString("device", device);
    e.setFloat("latitude", lat);
    e.setFloat("longitude", lon);
    e.setFloat("distance_m", Math.round(distance * 10.0) / 10.0);
    e.popObject();
    const topic = envOr("ALERT_TOPIC_PREFIX", "backend") + "/" + device + "/alert";
    const rc = sendMqtt(topic, e.toString());
    if (rc != 0) {
      logAt(LEVEL_ERROR, "geofence-alert: " + device + ": publish to " + topic + " failed (" + rc.toString() + ")");
      return PUBLISH_FAILED;
    }
    SetDB(key, String.UTF8.encode("out"));
    logAt(LEVEL_WARN, "geofence-alert: " + device + " left the geofence, " + fmt(Math.round(distance)) +
        " m from the centre (radius " + fmt(radius) + " m); alert sent to " + topic);
  } else if (!outside && wasOutside) {
    SetDB(key, String.UTF8.encode("in"));
    Log("geofence-alert: " + device + " is back inside the geofence, " + fmt(Math.round(distance)) + " m from the centre");
  } else if (prev == null) {
    SetDB(key, String.UTF8.encode("in")); // first reading, inside: remember the device
  }
  return OK;
}
