/**
 * node-redis as the project's Redis clients take it: `TracingChannel.hasSubscribers` is defined
 * first (see tracing-channel.ts), so no client made from here wraps and traces every command for
 * nobody where the runtime (Bun) lacks the property. Import `createClient` and `defineScript` from
 * here, not from "redis", in src/.
 */
import "./tracing-channel.ts";
export { createClient, defineScript } from "redis";
