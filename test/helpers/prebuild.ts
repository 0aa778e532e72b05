/**
 * Builds the compiled executable the end-to-end and browser tests start (`compiledBinary()`,
 * cached by a hash of the sources) before `bun test` starts its workers: left to the tests, each
 * of the four parallel workers that reached an e2e file first built its own copy (~2 s of a core
 * and ~130 MB written each) in the middle of the run, and a clean-clone CI run timed out four tests
 * beside them. Run by `bun run test`; prints where the binary is and whether it was built or cached.
 */
import { existsSync } from "node:fs";
import { cachedBinaryPath, compiledBinary } from "./binary.ts";

const t0 = performance.now();
const cached = existsSync(cachedBinaryPath());
const binary = compiledBinary();
console.log(`test binary: ${binary} (${cached ? "cached" : `built in ${((performance.now() - t0) / 1000).toFixed(1)} s`})`);
