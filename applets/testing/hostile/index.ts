// hostile: handlers that misbehave on purpose, for the runtime's isolation
// tests. Each one must be contained (time limit, memory limit, trap reported
// as the event's result) while other events keep flowing.

import { Log } from "@w3bstream/wasm-sdk";

export { alloc } from "@w3bstream/wasm-sdk";

// A mutable global the optimiser cannot see through, so loops and recursion
// below keep their side effects and are not folded away.
let sink: i32 = 0;

// Control: logs and returns 0. Also the default handler.
export function well_behaved(rid: i32): i32 {
  Log("hostile: well behaved, rid " + rid.toString());
  return 0;
}

export function start(rid: i32): i32 {
  return well_behaved(rid);
}

// Never returns: a loop with no calls in it (wasm3 cannot interrupt it).
export function spin(rid: i32): i32 {
  while (true) {
    sink = sink * 1103515245 + 12345 + rid;
  }
  return sink; // unreachable
}

// Grows memory 1 MiB (16 pages) at a time and writes to every new page so the
// pages are really committed, until memory.grow fails (returns -1). Returns the
// number of 64 KiB pages it managed to add, if the host lets it get that far.
export function memory_bomb(rid: i32): i32 {
  let added = 0;
  while (true) {
    const before = memory.grow(16);
    if (before < 0) break;
    for (let p = 0; p < 16; p++) {
      store<i32>((<usize>(before + p) << 16) + 8, rid + p);
    }
    added += 16;
  }
  Log("hostile: memory_bomb stopped after " + added.toString() + " pages");
  return added;
}

// Allocates 1 MiB buffers through the AssemblyScript runtime and keeps them, so
// the allocator must grow memory until memory.grow fails; the runtime then traps
// (unreachable) on its own. Never returns normally.
export function alloc_bomb(rid: i32): i32 {
  const kept = new Array<ArrayBuffer>();
  while (true) {
    kept.push(new ArrayBuffer(1 << 20));
    sink += kept.length + rid;
  }
  return kept.length; // unreachable
}

// Recursion without a base case: ends in a stack-overflow trap.
function dive(n: i32): i32 {
  sink += n;
  return dive(n + 1) + sink;
}

export function deep_recursion(rid: i32): i32 {
  return dive(rid);
}

// The unreachable instruction: a trap with no abort call before it.
export function trap(rid: i32): i32 {
  sink = rid;
  unreachable();
  return 0;
}

// Integer division by zero: a trap raised by an ordinary instruction.
export function div_zero(rid: i32): i32 {
  return rid / sink_zero();
}

// Zero that binaryen cannot prove constant (read from memory written at run time).
function sink_zero(): i32 {
  sink = 0;
  return sink;
}
