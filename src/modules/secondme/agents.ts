/**
 * Agents Core client for Second Me (seed 000 §7, seed 001 `call_agents_core`): one interface, two
 * transports chosen by configuration.
 *
 * - HTTP: `POST {AGENTS_SERVICE_URL}/agents/{agent_id}/invoke` with `{input, context:{user_id, kind:"secondme"}}`.
 * - NATS request/reply on `agents.invoke` with `{event:"agents.invoke", agent_id, payload:{input, user_id, source:"secondme"}}`.
 *
 * The reply text is the first non-empty string among `reply`, `output`, `text` (at the top or in a
 * `payload` object); token usage comes from `tokens_used` or `usage` when present. A connection
 * error is retried once; a timeout never is (the agent may still be working). Every failure is an
 * AppError; there is never a made-up answer (seed 001 fell back to a mock reply: we do not).
 */
import type { Broker } from "../../engine/broker/broker.ts";
import { BrokerRequestError } from "../../engine/broker/broker.ts";
import { AppError } from "../../engine/errors.ts";
import type { Logger } from "../../log.ts";

export interface AgentRequest {
  agentId: string;
  userId: string;
  /** The prompt with the conversation before it. */
  input: string;
}

export interface AgentReply {
  text: string;
  /** Tokens the agent reports having used, if it says. */
  tokens: number | null;
}

/** Why a transport failed; the client decides what each means. */
export class TransportError extends Error {
  constructor(
    readonly kind: "connection" | "timeout" | "status",
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = "TransportError";
  }
}

/** A way to reach Agents Core. */
export interface AgentsTransport {
  readonly name: "http" | "nats";
  /**
   * Sends one invoke and returns the raw reply body.
   * @throws TransportError
   */
  send(req: AgentRequest, timeoutMs: number): Promise<string>;
}

/** HTTP transport (seed 000 §7 "HTTP-level"). */
export class HttpAgentsTransport implements AgentsTransport {
  readonly name = "http" as const;
  constructor(private readonly baseUrl: string) {}

  async send(req: AgentRequest, timeoutMs: number): Promise<string> {
    const url = `${this.baseUrl.replace(/\/+$/, "")}/agents/${encodeURIComponent(req.agentId)}/invoke`;
    let res: Response;
    const signal = AbortSignal.timeout(timeoutMs);
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify({ input: req.input, context: { user_id: req.userId, kind: "secondme" } }),
        signal,
      });
    } catch (err) {
      throw toTransportError(err, signal);
    }
    let body: string;
    try {
      body = await res.text();
    } catch (err) {
      throw toTransportError(err, signal);
    }
    if (!res.ok) throw new TransportError("status", `Agents Core answered ${res.status}`, res.status);
    return body;
  }
}

function toTransportError(err: unknown, signal: AbortSignal): TransportError {
  const e = err as Error;
  if (signal.aborted || e.name === "TimeoutError" || e.name === "AbortError") return new TransportError("timeout", "Agents Core did not answer in time");
  return new TransportError("connection", `Agents Core unreachable: ${e.message}`);
}

/** NATS request/reply transport (seed 000 §7 `agents.invoke`). */
export class NatsAgentsTransport implements AgentsTransport {
  readonly name = "nats" as const;
  constructor(
    private readonly broker: Broker,
    private readonly subject: string,
  ) {}

  async send(req: AgentRequest, timeoutMs: number): Promise<string> {
    const payload = JSON.stringify({ event: "agents.invoke", agent_id: req.agentId, payload: { input: req.input, user_id: req.userId, source: "secondme" } });
    try {
      return await this.broker.request(this.subject, payload, timeoutMs);
    } catch (err) {
      if (err instanceof BrokerRequestError && err.kind === "timeout") throw new TransportError("timeout", "Agents Core did not answer in time");
      throw new TransportError("connection", `Agents Core unreachable: ${(err as Error).message}`);
    }
  }
}

/** Reads the reply text and token usage out of an Agents Core answer. @throws AppError `bad_agent_reply` */
export function parseAgentReply(raw: string): AgentReply {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new AppError("bad_agent_reply", "Agents Core answered something that is not JSON");
  }
  const layers = [v, (v as { payload?: unknown } | null)?.payload].filter((x): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x));
  for (const o of layers) {
    for (const key of ["reply", "output", "text"]) {
      const t = o[key];
      if (typeof t === "string" && t.trim() !== "") return { text: t, tokens: tokensOf(layers) };
    }
  }
  throw new AppError("bad_agent_reply", "Agents Core's answer has no non-empty reply, output or text");
}

function tokensOf(layers: Record<string, unknown>[]): number | null {
  for (const o of layers) {
    if (typeof o.tokens_used === "number") return Math.round(o.tokens_used);
    const u = o.usage;
    if (typeof u === "number") return Math.round(u);
    if (u && typeof u === "object") {
      const r = u as Record<string, unknown>;
      if (typeof r.total_tokens === "number") return Math.round(r.total_tokens);
      if (typeof r.prompt_tokens === "number" || typeof r.completion_tokens === "number") {
        return Math.round(Number(r.prompt_tokens ?? 0) + Number(r.completion_tokens ?? 0));
      }
      if (typeof r.tokens === "number") return Math.round(r.tokens);
    }
  }
  return null;
}

/** The client Second Me uses: retry policy and error mapping over a transport. */
export class AgentsClient {
  constructor(
    private readonly transport: AgentsTransport,
    private readonly timeoutMs: number,
    private readonly log: Logger,
  ) {}

  /**
   * Invokes the agent.
   * @throws AppError `agents_core_unreachable` (502, after one retry), `agents_core_timeout` (504),
   *   `agents_core_error` (502, an HTTP error status), `bad_agent_reply` (502)
   */
  async invoke(req: AgentRequest): Promise<AgentReply> {
    for (let attempt = 1; ; attempt++) {
      try {
        return parseAgentReply(await this.transport.send(req, this.timeoutMs));
      } catch (err) {
        if (!(err instanceof TransportError)) throw err;
        if (err.kind === "connection" && attempt === 1) {
          this.log.warn("secondme: Agents Core connection failed; retrying once", { transport: this.transport.name, err });
          continue;
        }
        if (err.kind === "timeout") throw new AppError("agents_core_timeout", `Agents Core did not answer within ${this.timeoutMs} ms`);
        if (err.kind === "status") throw new AppError("agents_core_error", `Agents Core answered HTTP ${err.status}`);
        throw new AppError("agents_core_unreachable", "Agents Core cannot be reached");
      }
    }
  }
}
