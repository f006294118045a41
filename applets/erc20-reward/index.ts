// erc20-reward: mints ERC-20 tokens to a device's owner for every N valid
// readings, with ws_send_tx. See README.md for env keys, KV keys and return codes.

import { GetDataByRID, GetDB, JSON, JSONEncoder, Log, SetDB } from "@w3bstream/wasm-sdk";
import { buildTxSlot, weiToHex } from "@w3bstream/wasm-sdk/assembly/utility";
import { LEVEL_ERROR, LEVEL_WARN, envOr, logAt, numberOf, sendTx, stringOf } from "../lib/host";
import { outOfRange, parseReading } from "../lib/pebble";

export { alloc } from "@w3bstream/wasm-sdk";

const OK: i32 = 0;             // counted (and rewarded, if due)
const NOT_COUNTED: i32 = 1;    // reading out of range (same ranges as pebble-validator)
const BAD_PAYLOAD: i32 = 2;    // not a Pebble reading
const TX_FAILED: i32 = 3;      // ws_send_tx failed; the reward stays owed and is retried on the next reading
const BAD_CONFIG: i32 = 4;     // a reward is due but TOKEN_ADDRESS / CHAIN_ID / recipient / amount is unusable

const MINT_SELECTOR = "40c10f19"; // mint(address,uint256)

// "0x" + 40 hex digits -> 40 lowercase hex digits, or "" when malformed.
function address(s: string): string {
  const hex = s.startsWith("0x") || s.startsWith("0X") ? s.slice(2) : s;
  if (hex.length != 40) return "";
  for (let i = 0; i < 40; i++) {
    const c = hex.charCodeAt(i) | 0x20; // lower-case letters
    if (!((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66))) return "";
  }
  return hex.toLowerCase();
}

function isDecimal(s: string): bool {
  if (s.length == 0 || s.length > 38) return false; // u128 holds any 38-digit number
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

class Tally {
  valid: i64 = 0;   // valid readings counted
  paid: i64 = 0;    // rewards sent; a reward is owed while valid / every > paid
  last_tx: string = "";
}

function load(key: string): Tally {
  const t = new Tally();
  const raw = GetDB(key);
  if (raw == null) return t;
  const text = String.UTF8.decode(raw);
  if (text.length < 2 || text.charCodeAt(0) != 0x7b) return t;
  const obj = <JSON.Obj>JSON.parse(text);
  const valid = numberOf(obj, "valid");
  if (!isNaN(valid)) t.valid = <i64>valid;
  const paid = numberOf(obj, "paid");
  if (!isNaN(paid)) t.paid = <i64>paid;
  t.last_tx = stringOf(obj, "last_tx");
  return t;
}

function save(key: string, t: Tally): void {
  const e = new JSONEncoder();
  e.pushObject(null);
  e.setInteger("valid", t.valid);
  e.setInteger("paid", t.paid);
  e.setString("last_tx", t.last_tx);
  e.popObject();
  SetDB(key, String.UTF8.encode(e.toString()));
}

export function start(rid: i32): i32 {
  const reading = parseReading(GetDataByRID(rid));
  if (reading == null) {
    logAt(LEVEL_WARN, "erc20-reward: rid " + rid.toString() + ": payload is not a Pebble reading");
    return BAD_PAYLOAD;
  }
  const device = reading.device;
  if (outOfRange(reading.data).length > 0) return NOT_COUNTED;

  const key = "reward:" + device;
  const t = load(key);
  t.valid += 1;
  save(key, t); // counted even if the reward below cannot go out yet

  let every = <i64>parseInt(envOr("REWARD_EVERY", "10"));
  if (every < 1) every = 10;
  if (t.valid / every <= t.paid) return OK;

  // A reward is due.
  const token = address(envOr("TOKEN_ADDRESS", ""));
  const chainId = <i32>parseInt(envOr("CHAIN_ID", ""));
  const to = address(envOr("REWARD_TO", reading.owner));
  const amount = envOr("REWARD_AMOUNT", "1000000000000000000"); // 1 token at 18 decimals
  if (token.length == 0 || chainId <= 0 || to.length == 0 || !isDecimal(amount)) {
    logAt(LEVEL_ERROR, "erc20-reward: " + device + ": reward due but TOKEN_ADDRESS, CHAIN_ID, " +
        "REWARD_TO (or the payload's owner) or REWARD_AMOUNT is missing or malformed");
    return BAD_CONFIG;
  }
  const data = MINT_SELECTOR + buildTxSlot(to) + buildTxSlot(weiToHex(amount));
  const tx = new JSONEncoder();
  tx.pushObject(null);
  tx.setString("to", "0x" + token);
  tx.setString("value", "0");
  tx.setString("data", data);
  tx.popObject();

  const hash = sendTx(chainId, tx.toString());
  if (hash == null) {
    logAt(LEVEL_ERROR, "erc20-reward: " + device + ": ws_send_tx failed on chain " + chainId.toString() + "; will retry");
    return TX_FAILED;
  }
  t.paid += 1;
  t.last_tx = hash;
  save(key, t);
  Log("erc20-reward: " + device + ": " + t.valid.toString() + " valid readings, minted " + amount +
      " to 0x" + to + " tx " + hash);
  return OK;
}
