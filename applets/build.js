#!/usr/bin/env node
// Compiles every AssemblyScript applet under applets/ into applets/build/<name>.wasm
// and writes applets/build/manifest.json (name -> sha256, size, imports, exports).
//
//   node applets/build.js [--force] [--quiet] [name ...]
//
// An applet is a folder with an index.ts (applets/<name>/ or applets/testing/<name>/);
// applets/lib/ holds shared code. Outputs newer than all of their inputs (the applet's
// sources, lib/, this script and package-lock.json, which pins the compiler) are kept.
//
// Each compile is the equivalent of
//   npx asc applets/<name>/index.ts -O3 --runtime incremental -o applets/build/<name>.wasm
// run through asc's JS API in this one process (no npx start-up per applet).
// Not --noAssert: the SDK reports host errors (SendTx, ExecSQL, GetEnv) and the JSON
// parser reports malformed input through assert; without it they would carry on with
// uninitialised out-pointers instead of aborting with a message.
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const ROOT = __dirname;
const OUT = path.join(ROOT, "build");
const SKIP = new Set(["lib", "build", "node_modules"]);
const ASC_FLAGS = ["-O3", "--runtime", "incremental"];

function findApplets(dir, found = []) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory() || SKIP.has(entry.name)) continue;
    const sub = path.join(dir, entry.name);
    if (fs.existsSync(path.join(sub, "index.ts"))) found.push({ name: entry.name, dir: sub });
    else findApplets(sub, found);
  }
  return found;
}

function newestMtime(paths) {
  let newest = 0;
  for (const p of paths) {
    const st = fs.statSync(p);
    if (st.isDirectory()) {
      const files = fs.readdirSync(p).filter((f) => f.endsWith(".ts")).map((f) => path.join(p, f));
      newest = Math.max(newest, newestMtime(files));
    } else newest = Math.max(newest, st.mtimeMs);
  }
  return newest;
}

// --- a minimal wasm reader: import, export and type sections only -------

const VALTYPE = { 0x7f: "i", 0x7e: "I", 0x7d: "f", 0x7c: "F" };
const KIND = ["func", "table", "memory", "global"];

function readModule(buf) {
  if (buf.readUInt32LE(0) !== 0x6d736100) throw new Error("not a wasm module");
  let pos = 8;
  const u32 = () => {
    let result = 0, shift = 0, byte;
    do {
      byte = buf[pos++];
      result |= (byte & 0x7f) << shift;
      shift += 7;
    } while (byte & 0x80);
    return result >>> 0;
  };
  const name = () => {
    const len = u32();
    const s = buf.toString("utf8", pos, pos + len);
    pos += len;
    return s;
  };
  const types = [], imports = [], exports = [];
  while (pos < buf.length) {
    const id = buf[pos++];
    const size = u32();
    const end = pos + size;
    if (id === 1) {
      // Types in pywasm3 notation, e.g. "i(iii)"; "v" for no result.
      for (let n = u32(); n > 0; n--) {
        pos++; // 0x60 func
        const params = [];
        for (let p = u32(); p > 0; p--) params.push(VALTYPE[buf[pos++]] || "?");
        const results = [];
        for (let r = u32(); r > 0; r--) results.push(VALTYPE[buf[pos++]] || "?");
        types.push(`${results.join("") || "v"}(${params.join("")})`);
      }
    } else if (id === 2) {
      for (let n = u32(); n > 0; n--) {
        const module = name(), field = name(), kind = buf[pos++];
        const imp = { name: `${module}.${field}`, kind: KIND[kind] };
        if (kind === 0) imp.type = types[u32()];
        else if (kind === 1) { pos++; const f = buf[pos++]; u32(); if (f & 1) u32(); }
        else if (kind === 2) { const f = buf[pos++]; u32(); if (f & 1) u32(); }
        else if (kind === 3) pos += 2;
        imports.push(imp);
      }
    } else if (id === 7) {
      for (let n = u32(); n > 0; n--) {
        const field = name(), kind = buf[pos++];
        u32(); // index
        exports.push({ name: field, kind: KIND[kind] });
      }
    }
    pos = end;
  }
  return { imports, exports };
}

// --- build ---------------------------------------------------------------

async function main() {
  const args = process.argv.slice(2);
  const force = args.includes("--force");
  const quiet = args.includes("--quiet");
  const only = args.filter((a) => !a.startsWith("--"));
  const say = quiet ? () => {} : (msg) => console.log(msg);

  const applets = findApplets(ROOT).sort((a, b) => a.name.localeCompare(b.name));
  const names = new Set();
  for (const a of applets) {
    if (names.has(a.name)) throw new Error(`two applets named ${a.name}`);
    names.add(a.name);
  }
  fs.mkdirSync(OUT, { recursive: true });

  const shared = [path.join(ROOT, "lib"), __filename, path.join(ROOT, "..", "package-lock.json")]
    .filter((p) => fs.existsSync(p));
  let asc = null;
  let failed = 0;
  for (const a of applets) {
    const wasm = path.join(OUT, `${a.name}.wasm`);
    if (only.length && !only.includes(a.name)) continue;
    const stale = force || !fs.existsSync(wasm) ||
      fs.statSync(wasm).mtimeMs < newestMtime([a.dir, ...shared]);
    if (!stale) continue;
    asc = asc || (await import("assemblyscript/asc"));
    const started = Date.now();
    const stdout = asc.createMemoryStream();
    const stderr = asc.createMemoryStream();
    const entry = path.relative(process.cwd(), path.join(a.dir, "index.ts"));
    // Written under a temporary name and renamed, so a reader never sees half a module.
    const tmp = `${wasm}.${process.pid}.tmp`;
    const { error } = await asc.main([entry, ...ASC_FLAGS, "-o", tmp], { stdout, stderr });
    if (!error) fs.renameSync(tmp, wasm);
    if (error) {
      failed++;
      fs.rmSync(tmp, { force: true });
      process.stderr.write(`applets: ${a.name} failed:\n${stderr.toString()}\n`);
      continue;
    }
    say(`applets: built ${path.relative(process.cwd(), wasm)} (${fs.statSync(wasm).size} bytes, ${Date.now() - started} ms)`);
  }

  // The manifest covers every built applet, rebuilt or not; written only when it changes.
  const manifest = {};
  for (const a of applets) {
    const wasm = path.join(OUT, `${a.name}.wasm`);
    if (!fs.existsSync(wasm)) continue;
    const buf = fs.readFileSync(wasm);
    const { imports, exports } = readModule(buf);
    manifest[a.name] = {
      file: `${a.name}.wasm`,
      source: path.relative(ROOT, a.dir),
      sha256: crypto.createHash("sha256").update(buf).digest("hex"),
      size: buf.length,
      imports: imports.map((i) => i.name),
      import_types: Object.fromEntries(imports.filter((i) => i.type).map((i) => [i.name, i.type])),
      exports: exports.map((e) => e.name),
    };
  }
  const text = JSON.stringify(manifest, null, 2) + "\n";
  const manifestPath = path.join(OUT, "manifest.json");
  if (!fs.existsSync(manifestPath) || fs.readFileSync(manifestPath, "utf8") !== text) {
    fs.writeFileSync(`${manifestPath}.${process.pid}.tmp`, text);
    fs.renameSync(`${manifestPath}.${process.pid}.tmp`, manifestPath);
  }
  if (failed) process.exit(1);
}

main().catch((err) => {
  process.stderr.write(`applets: ${err.stack || err}\n`);
  process.exit(1);
});
