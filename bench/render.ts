/**
 * Writes results into bench/README.md, each kind of run between its own markers
 * (`<!-- name:start -->` … `<!-- name:end -->`); the table of a full run (`results`) is made here.
 */
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { median } from "./load/hist.ts";
import type { Summary } from "./run.ts";

const README = path.join(import.meta.dir, "README.md");

/**
 * Replaces what bench/README.md holds between `<!-- name:start -->` and `<!-- name:end -->` with `body`.
 * @throws Error when the markers are missing
 */
export function writeSection(name: string, body: string): void {
  const text = readFileSync(README, "utf8");
  const start = `<!-- ${name}:start -->`;
  const a = text.indexOf(start);
  const b = text.indexOf(`<!-- ${name}:end -->`);
  if (a < 0 || b < a) throw new Error(`bench/README.md lacks the ${name} markers`);
  writeFileSync(README, text.slice(0, a + start.length) + "\n" + body + "\n" + text.slice(b));
}

const fmt = (x: number | null | undefined, suffix = "") => (x === null || x === undefined ? "–" : `${x.toLocaleString("en-US")}${suffix}`);

export function renderTable(meta: any, summaries: Summary[]): string {
  const lines: string[] = [];
  lines.push(`Run ${meta.date} · \`${meta.command}\` · ${meta.duration_s} s`);
  lines.push(`Machine: ${meta.machine.cpus} × ${meta.machine.cpu_model}, ${meta.machine.memory_gib} GiB, Linux ${meta.machine.kernel}, Bun ${meta.machine.bun}, Node ${meta.machine.node}. Clients and server share the cores.`);
  lines.push("");
  lines.push("p50, p99 and echo are over every delivery of every rep together; `p99 per rep` shows each rep's own, and `median × raw` compares the medians of the reps' p99s (a rep the machine stalled, which moves every server's p99 at once, moves it least).");
  lines.push("");
  lines.push("| scenario | server | deliveries/s | × raw | p50 ms | p99 ms | p99 × raw | p99 per rep ms | median × raw | max ms | echo p50 / p99 ms | lost | late | closed | server CPU s | peak RSS MiB |");
  lines.push("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  const fanout = summaries.filter((s) => s.rss_per_socket_kb === undefined);
  const round2 = (x: number) => Math.round(x * 100) / 100;
  for (const s of fanout) {
    const perRep = s.p99_reps_ms ? s.p99_reps_ms.map((x) => fmt(x === null ? null : Math.round(x * 10) / 10)).join(" / ") : "–";
    const raw = fanout.find((r) => r.scenario === s.scenario && r.server === "raw-bun");
    const mine = median(s.p99_reps_ms ?? []);
    const theirs = median(raw?.p99_reps_ms ?? []);
    const medianRatio = mine !== null && theirs ? round2(mine / theirs) : null;
    lines.push(
      `| ${s.title} | ${s.server} | ${fmt(s.deliveries_per_s)} | ${fmt(s.ratio_to_raw.deliveries_per_s)} | ${fmt(s.p50_ms)} | ${fmt(s.p99_ms)} | ${fmt(s.ratio_to_raw.p99_ms)} | ${perRep} | ${fmt(medianRatio)} | ${fmt(s.max_ms)} | ${fmt(s.echo_p50_ms)} / ${fmt(s.echo_p99_ms)} | ${s.lost} | ${s.late ?? 0} | ${s.closed} | ${fmt(s.server_cpu_s)} | ${fmt(s.peak_rss_mb)} |`,
    );
  }
  const staged = fanout.filter((s) => s.stage_p99_ms);
  if (staged.length) {
    lines.push("");
    lines.push("Where the project's time goes, from its own `/metrics` over the same runs (p99 ms of each stage: frame read → admitted → its batch taken for commit → committed → published; `total` is read → published; the event loop's delay is how late a 25 ms timer fired):");
    lines.push("");
    lines.push("| scenario | server | admit | queue | commit | publish | total | event-loop delay |");
    lines.push("|---|---|---:|---:|---:|---:|---:|---:|");
    for (const s of staged) {
      const st = s.stage_p99_ms!;
      lines.push(`| ${s.title} | ${s.server} | ${fmt(st.admit)} | ${fmt(st.queue)} | ${fmt(st.commit)} | ${fmt(st.publish)} | ${fmt(st.total)} | ${fmt(s.loop_delay_p99_ms)} |`);
    }
  }
  const conn = summaries.filter((s) => s.rss_per_socket_kb !== undefined);
  if (conn.length) {
    lines.push("");
    lines.push("| scenario | server | RSS per socket KiB | × raw | connections/s (median of reps) | × raw | connections/s per rep | peak RSS MiB | failed |");
    lines.push("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (const s of conn) {
      const perRep = (s.connections_per_s_reps ?? []).map((v) => fmt(v)).join(" / ");
      lines.push(`| ${s.title} | ${s.server} | ${fmt(s.rss_per_socket_kb)} | ${fmt(s.ratio_to_raw.rss_per_socket_kb)} | ${fmt(s.connections_per_s)} | ${fmt(s.ratio_to_raw.connections_per_s)} | ${perRep} | ${fmt(s.peak_rss_mb)} | ${s.errors} |`);
    }
  }
  return lines.join("\n");
}

export function renderReadme(meta: any, summaries: Summary[]): void {
  writeSection("results", renderTable(meta, summaries));
}

if (import.meta.main) {
  const file = process.argv[2] ?? path.join(import.meta.dir, "results/latest-full.json");
  const { meta, summaries } = JSON.parse(readFileSync(file, "utf8"));
  renderReadme(meta, summaries);
}
