/**
 * Reads Prometheus histograms out of `/metrics` text and turns the difference between two scrapes
 * into quantiles, so a bench run reports which stage of the project's write path owns its tail
 * (`daarion_city_message_stage_seconds{stage}`, `daarion_city_event_loop_delay_seconds`).
 */

/** Cumulative bucket counts by `le` (seconds), for one series. */
export type Buckets = Map<number, number>;

/**
 * Every series of histogram `name` in `text`, keyed by its labels other than `le` (`""` for none).
 * @returns label key → buckets
 */
export function histograms(text: string, name: string): Map<string, Buckets> {
  const out = new Map<string, Buckets>();
  const re = new RegExp(`^${name}_bucket\\{([^}]*)\\} (\\S+)$`, "gm");
  for (const m of text.matchAll(re)) {
    const labels = m[1]!.split(",").filter((l) => !l.startsWith("le="));
    const le = /le="([^"]+)"/.exec(m[1]!)![1]!;
    const key = labels.join(",");
    let b = out.get(key);
    if (!b) out.set(key, (b = new Map()));
    b.set(le === "+Inf" ? Infinity : Number(le), Number(m[2]));
  }
  return out;
}

/** `after − before`, bucket by bucket (the observations made between two scrapes). */
export function delta(after: Buckets, before: Buckets | undefined): Buckets {
  const out: Buckets = new Map();
  for (const [le, n] of after) out.set(le, n - (before?.get(le) ?? 0));
  return out;
}

/**
 * The q-quantile of cumulative buckets, interpolated linearly inside its bucket (as Prometheus'
 * `histogram_quantile` does); null with no observations.
 * @returns seconds
 */
export function quantile(b: Buckets, q: number): number | null {
  const les = [...b.keys()].sort((x, y) => x - y);
  const total = b.get(Infinity) ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const le of les) {
    const count = b.get(le)!;
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(1, count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** p50/p99 (ms) and count of each series of `name` observed between two scrapes. */
export function stageSummary(before: string, after: string, name: string): Record<string, { count: number; p50_ms: number | null; p99_ms: number | null }> {
  const b = histograms(before, name);
  const out: Record<string, { count: number; p50_ms: number | null; p99_ms: number | null }> = {};
  for (const [key, buckets] of histograms(after, name)) {
    const d = delta(buckets, b.get(key));
    const label = /"([^"]*)"/.exec(key)?.[1] ?? "all";
    const ms = (v: number | null) => (v === null ? null : Math.round(v * 1e5) / 100);
    out[label] = { count: d.get(Infinity) ?? 0, p50_ms: ms(quantile(d, 0.5)), p99_ms: ms(quantile(d, 0.99)) };
  }
  return out;
}
