/**
 * Latency histogram in microseconds with log-scaled buckets (each 2% wider than the last, so any
 * quantile is within 2%), from 1 µs to about 10 minutes, plus the exact maximum. Histograms from
 * several client processes merge by adding their counts.
 */
const GROWTH = 1.02;
const LOG_GROWTH = Math.log(GROWTH);
export const BUCKETS = 1400; // 1.02^1400 µs ≈ 10^12 µs

export interface HistogramData {
  counts: number[];
  maxUs: number;
  total: number;
}

const bucketOf = (us: number) => Math.min(BUCKETS - 1, Math.max(0, Math.floor(Math.log(us + 1) / LOG_GROWTH)));
const upperEdgeUs = (i: number) => GROWTH ** (i + 1) - 1;

export class Histogram {
  readonly counts = new Uint32Array(BUCKETS);
  maxUs = 0;
  total = 0;

  record(us: number): void {
    const v = us < 0 ? 0 : us;
    this.counts[bucketOf(v)]!++;
    if (v > this.maxUs) this.maxUs = v;
    this.total++;
  }

  reset(): void {
    this.counts.fill(0);
    this.maxUs = 0;
    this.total = 0;
  }

  toData(): HistogramData {
    return { counts: Array.from(this.counts), maxUs: this.maxUs, total: this.total };
  }
}

/** Adds `b` into `a` (or copies `b` when `a` is null). */
export function merge(a: HistogramData | null, b: HistogramData): HistogramData {
  if (!a) return { counts: [...b.counts], maxUs: b.maxUs, total: b.total };
  for (let i = 0; i < BUCKETS; i++) a.counts[i]! += b.counts[i] ?? 0;
  a.maxUs = Math.max(a.maxUs, b.maxUs);
  a.total += b.total;
  return a;
}

/** The median of the numbers among `xs` (the mean of the middle two for an even count); null when none. */
export function median(xs: (number | null | undefined)[]): number | null {
  const v = xs.filter((x): x is number => typeof x === "number").sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

/** The latency (ms) below which fraction `q` of samples fall (bucket upper edge, ≤ max). */
export function quantileMs(h: HistogramData, q: number): number | null {
  if (h.total === 0) return null;
  const target = Math.ceil(h.total * q);
  let seen = 0;
  for (let i = 0; i < BUCKETS; i++) {
    seen += h.counts[i]!;
    if (seen >= target) return Math.round(Math.min(upperEdgeUs(i), h.maxUs)) / 1000;
  }
  return h.maxUs / 1000;
}
