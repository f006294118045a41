#!/usr/bin/env node
// Compile the contracts (contracts/<Name>.sol) with solcjs (npm `solc`, pinned in package.json) through the
// standard-JSON interface: the solcjs command line has no --evm-version, and the artifact must not
// depend on the compiler's default EVM version.
//
//   node contracts/compile.js [Name]            write each artifact (or Name's) where CONTRACTS says:
//                                               committed package data, which an installed gateway
//                                               loads with importlib.resources
//   node contracts/compile.js Name --stdout     print Name's artifact instead (tests compare it to the file)
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const solc = require("solc");

// contract -> the package that ships its artifact
const CONTRACTS = { ProofRegistry: "proofs", DataMarket: "market" };
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
};

function compile(NAME) {
  const SOURCE_KEY = `contracts/${NAME}.sol`; // the name recorded in the metadata: keep it fixed
  const source = fs.readFileSync(path.join(__dirname, `${NAME}.sol`), "utf8");
  const input = {
    language: "Solidity",
    sources: { [SOURCE_KEY]: { content: source } },
    settings: {
      ...SETTINGS,
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const problems = output.errors || [];
  for (const p of problems) process.stderr.write(p.formattedMessage || p.message);
  if (problems.some((p) => p.severity === "error")) process.exit(1);
  const contract = output.contracts[SOURCE_KEY][NAME];
  return {
    contractName: NAME,
    source: SOURCE_KEY,
    sourceSha256: crypto.createHash("sha256").update(source, "utf8").digest("hex"),
    compiler: { name: "solcjs", version: solc.version() },
    settings: SETTINGS,
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
  };
}

const names = process.argv.slice(2).filter((a) => !a.startsWith("--"));
for (const name of names) {
  if (!(name in CONTRACTS)) {
    process.stderr.write(`unknown contract ${name} (known: ${Object.keys(CONTRACTS).join(", ")})\n`);
    process.exit(2);
  }
}
for (const name of names.length ? names : Object.keys(CONTRACTS)) {
  const text = JSON.stringify(compile(name), null, 2) + "\n";
  if (process.argv.includes("--stdout")) {
    process.stdout.write(text);
  } else {
    const out = path.join(__dirname, "..", "gateway", CONTRACTS[name], `${name}.json`);
    fs.writeFileSync(out, text);
    process.stderr.write(`wrote ${path.relative(process.cwd(), out)}\n`);
  }
}
