/**
 * Broker: moves publications between instances of the city, and only between them (the
 * Phoenix.PubSub lesson in ARCHITECTURE). Local fan-out never goes through it: the instance that
 * makes a publication delivers it to its own sockets itself, and the broker never echoes a
 * publication back to the instance that published it.
 *
 * Contract (test/contract/broker.contract.ts, run on every implementation):
 * - `publish` is fire-and-forget and at most once; no acknowledgement, no replay.
 * - Publications from one instance on one subject arrive at every other subscribed instance in
 *   the order they were published.
 * - Subjects are dot-separated tokens; subscriptions may use `*` (one token) and `>` (the rest).
 * - The configured subject prefix is added on the wire and is invisible to callers.
 */
export interface Broker {
  /** Which implementation, for `/readyz` and logs. */
  readonly engine: "memory" | "nats";
  /** Connects; throws when the first connection cannot be made. */
  start(): Promise<void>;
  /** Sends `payload` to every other instance subscribed to a matching subject. */
  publish(subject: string, payload: string): void;
  /**
   * Calls `handler` for each publication from another instance matching `pattern` (with
   * `echo`, from this instance too: for consumers of public subjects such as the living map).
   * On NATS the handler runs on the main thread, fed in batches by the bus worker.
   * @returns a function that ends the subscription
   */
  subscribe(pattern: string, handler: (subject: string, payload: string) => void, options?: SubscribeOptions): () => void;
  /** Resolves when everything published so far has reached the broker (a round trip). */
  flush(): Promise<void>;
  /**
   * Request/reply with a service outside the city (seed 000 §7: Agents Core on `agents.invoke`).
   * @returns the reply payload
   * @throws BrokerRequestError `timeout` (no reply in time), `no_responders` (nobody listens),
   *   `disconnected` (no connection), or `not_available` (the in-process broker cannot reach
   *   other services)
   */
  request(subject: string, payload: string, timeoutMs: number): Promise<string>;
  /** `up` when publications flow; `down` while disconnected (they are dropped meanwhile). */
  state(): "up" | "down";
  /**
   * Calls `fn` on each change of {@link state}. An `up` after a `down` means publications from
   * other instances may have been lost meanwhile (at most once): whoever needs them reads them
   * from the store (room streams' positioning).
   * @returns a function that stops the calls
   */
  onStatus(fn: (state: "up" | "down") => void): () => void;
  /** Ends subscriptions and the connection. Idempotent. */
  close(): Promise<void>;
  /** One line for `/readyz` about how it is connected (e.g. where inbound subscriptions run). */
  detail?(): string;
  /**
   * JetStream, when the broker has it (NATS with `-js`); `null` when the server has none, and
   * absent on the in-process broker. Used by the living map for a durable event log.
   */
  jetstream?(): Promise<EventStream | null>;
}

/** One message of a JetStream stream: its sequence in the stream, subject, payload and time (epoch ms). */
export interface StreamEvent {
  seq: number;
  subject: string;
  payload: string;
  time: number;
}

/**
 * A JetStream stream read two ways (its readers run in the bus worker; batches reach the main
 * thread one at a time, the next only once the handler is done with the last).
 */
export interface EventStream {
  /**
   * Makes sure the stream (over `subjects`, messages kept `maxAgeMs`) and its durable consumer
   * exist, creating or updating them.
   * @returns the stream's last sequence, and the durable consumer's ack floor (every message up to
   *   it is acknowledged: handled by some instance)
   * @throws Error when JetStream refuses
   */
  ensure(o: { stream: string; subjects: string[]; maxAgeMs: number; consumer: string; ackWaitMs: number }): Promise<{ lastSeq: number; ackFloor: number }>;
  /**
   * Pulls batches from the durable consumer (shared by every instance: each message goes to one).
   * A batch is acknowledged when `handle` resolves; if it rejects, or the process dies first, its
   * messages are delivered again after the consumer's ack wait.
   * @returns a function that stops reading
   */
  durable(o: { stream: string; consumer: string; batch: number }, handle: (events: StreamEvent[]) => Promise<void>): () => void;
  /**
   * Reads every message of the stream in order, from `fromSeq` (0: from now on), on this instance.
   * @returns a function that stops reading
   */
  ordered(o: { stream: string; fromSeq: number; batch: number }, handle: (events: StreamEvent[]) => void | Promise<void>): () => void;
}

export interface SubscribeOptions {
  /** Also deliver this instance's own publications (default: only other instances'). */
  echo?: boolean;
}

/** True when `subject` matches the NATS-style `pattern` (`*` one token, `>` one or more at the end). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length) return false;
    if (p[i] !== "*" && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

/** Why a {@link Broker.request} failed. */
export class BrokerRequestError extends Error {
  constructor(
    readonly kind: "timeout" | "no_responders" | "disconnected" | "not_available",
    message: string,
  ) {
    super(message);
    this.name = "BrokerRequestError";
  }
}
