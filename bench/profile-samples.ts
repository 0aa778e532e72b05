/**
 * Reads a `.cpuprofile` (Bun's `--cpu-prof`, e.g. `BENCH_PROFILE_FORMAT=cpuprofile`) and prints the
 * functions with the most samples: self (the function was on top of the stack) and total (anywhere
 * in it). It counts samples, not the time between them: Bun's profiler samples only while the
 * thread runs JavaScript, so a sample after an idle gap carries the gap's time, and the Markdown
 * profile's times put idle waits on whatever ran next (see bench/README.md "How to profile").
 *
 *   bun bench/profile-samples.ts /tmp/prof/CPU.….cpuprofile [top=40]
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber?: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
}

/**
 * Sample counts by function (`name file:line`), self and total, the largest first.
 * @throws Error when the file is not a CPU profile
 */
export function sampleCounts(profile: CpuProfile): { total: number; self: [string, number][]; inclusive: [string, number][] } {
  if (!Array.isArray(profile.nodes) || !Array.isArray(profile.samples)) throw new Error("not a .cpuprofile: no nodes or samples");
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const label = (n: ProfileNode) => {
    const f = n.callFrame;
    const file = f.url.replace(/^.*?\/(src|bench|test|node_modules)\//, "$1/");
    return `${f.functionName || "(anonymous)"} ${file}:${(f.lineNumber ?? 0) + 1}`;
  };
  const hits = new Map<number, number>();
  for (const id of profile.samples) hits.set(id, (hits.get(id) ?? 0) + 1);
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, count] of hits) {
    const top = byId.get(id);
    if (!top) continue;
    self.set(label(top), (self.get(label(top)) ?? 0) + count);
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const l = label(byId.get(at)!);
      if (seen.has(l)) continue; // recursion counts once
      seen.add(l);
      inclusive.set(l, (inclusive.get(l) ?? 0) + count);
    }
  }
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  return { total: profile.samples.length, self: sorted(self), inclusive: sorted(inclusive) };
}

if (import.meta.main) {
  const [file, topArg] = process.argv.slice(2);
  if (!file) {
    console.error("usage: bun bench/profile-samples.ts <file.cpuprofile> [top]");
    process.exit(2);
  }
  const top = Number(topArg ?? 40);
  const { total, self, inclusive } = sampleCounts(JSON.parse(readFileSync(file, "utf8")) as CpuProfile);
  const pct = (n: number) => `${((100 * n) / total).toFixed(1).padStart(5)}%`;
  console.log(`${total} samples\n\nself:`);
  for (const [name, n] of self.slice(0, top)) console.log(`${pct(n)} ${String(n).padStart(7)}  ${name}`);
  console.log("\ntotal:");
  for (const [name, n] of inclusive.slice(0, top)) console.log(`${pct(n)} ${String(n).padStart(7)}  ${name}`);
}
