#!/usr/bin/env node
// Compile contracts/ProofRegistry.sol with solcjs (npm `solc`, pinned in package.json) through the
// standard-JSON interface: the solcjs command line has no --evm-version, and the artifact must not
// depend on the compiler's default EVM version.
//
//   node contracts/compile.js            write gateway/proofs/ProofRegistry.json (committed package data:
//                                        an installed gateway loads it with importlib.resources)
//   node contracts/compile.js --stdout   print the artifact instead (tests compare it to the file)
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const NAME = "ProofRegistry";
const SOURCE_KEY = `contracts/${NAME}.sol`; // the name recorded in the metadata: keep it fixed
const OUT = path.join(__dirname, "..", "gateway", "proofs", `${NAME}.json`);
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
};

function compile() {
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

const text = JSON.stringify(compile(), null, 2) + "\n";
if (process.argv.includes("--stdout")) {
  process.stdout.write(text);
} else {
  fs.writeFileSync(OUT, text);
  process.stderr.write(`wrote ${path.relative(process.cwd(), OUT)}\n`);
}
