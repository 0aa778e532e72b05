/**
 * Where a worker's entry file is, from source and in the compiled binary. In the binary
 * (`bun build --compile` with the workers as extra entry points) an entry is addressed relative to
 * `src/`, the common root of the entry points, and every bundled module's `import.meta.url` is the
 * executable's; from source it is a file URL. `test/e2e/` starts the binary, which catches a mismatch.
 * @param fromSrc the entry's path under `src/`, e.g. `workers/bus.worker.ts`
 * @returns the specifier for `new Worker(…)`
 */
export function workerEntry(fromSrc: string): string {
  return import.meta.url.includes("/$bunfs/") ? `./${fromSrc}` : new URL(`../${fromSrc}`, import.meta.url).href;
}
