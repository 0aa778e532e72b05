/**
 * src/tracing-channel.ts: TracingChannel answers hasSubscribers as Node does (false with nobody
 * listening, true while any of its five channels has a subscriber), so node-redis can skip its
 * per-command tracing when nobody traces.
 */
import { expect, test } from "bun:test";
import dc from "node:diagnostics_channel";
import { tracingChannelAnswersHasSubscribers } from "../../src/tracing-channel.ts";

test("a tracing channel has no subscribers until one of its channels has one, and none after it leaves", () => {
  expect(tracingChannelAnswersHasSubscribers).toBe(true);
  const name = `test:${Math.random().toString(36).slice(2)}`;
  const channel = dc.tracingChannel(name);
  expect(channel.hasSubscribers).toBe(false);
  const onEnd = () => {};
  dc.channel(`tracing:${name}:end`).subscribe(onEnd);
  expect(dc.tracingChannel(name).hasSubscribers).toBe(true); // another handle on the same name sees it too
  dc.channel(`tracing:${name}:end`).unsubscribe(onEnd);
  expect(channel.hasSubscribers).toBe(false);
  const all = { start() {}, end() {}, asyncStart() {}, asyncEnd() {}, error() {} };
  channel.subscribe(all);
  expect(channel.hasSubscribers).toBe(true);
  channel.unsubscribe(all);
  expect(channel.hasSubscribers).toBe(false);
});

test("node-redis, with nobody tracing, runs a command without its tracing wrapper", async () => {
  const { trace, CHANNELS } = await import("@redis/client/dist/lib/client/tracing.js");
  let contexts = 0;
  const out = await trace(CHANNELS.TRACE_COMMAND, async () => "ran", () => (contexts++, {}) as never);
  expect(out).toBe("ran");
  expect(contexts).toBe(0); // the trace context (sanitised arguments) was never built
});
