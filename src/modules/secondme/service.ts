/**
 * SecondMeService (seed 000 §6, seed 001 `service.py`): a personal agent per user, reached through
 * Agents Core, with the conversation kept in `secondme_sessions` / `secondme_messages`.
 *
 * invoke: the user's active session (the latest, or a new one) → the prompt is stored `pending`
 * → the agent gets the prompt with the last SECONDME_CONTEXT_MESSAGES messages → the reply is
 * stored with its tokens and latency and the prompt marked `answered`. On any failure the prompt
 * is marked `unanswered` with the error code and no assistant message is stored. One user's
 * invokes run one after another (on this instance), so each reply follows its prompt in the
 * history and sees the exchange before it: on this instance, and with Redis on every instance (a
 * per-user lease).
 */
import type { Clock } from "../../clock.ts";
import { AppError } from "../../engine/errors.ts";
import type { Limit } from "../../engine/ratelimit.ts";
import { LocalSerialQueue, type SerialQueue } from "../../engine/serial.ts";
import { IdGenerator, idTime } from "../../ids.ts";
import { checkText } from "../../text.ts";
import type { Logger } from "../../log.ts";
import type { SecondmeMessage, SecondmeStatus, Store } from "../../storage/store.ts";
import type { AgentsClient } from "./agents.ts";

/** Prompt limits (issue: 1 to 8,000 characters). */
export const PROMPT_MAX_CHARS = 8000;

/** A history entry as the API returns it (seed 000 §6.2 `{role, content, created_at}`, plus `status`). */
export interface HistoryEntry {
  role: "user" | "assistant";
  content: string;
  created_at: string;
  status: SecondmeStatus;
}

export interface SecondMeProfile {
  user_id: string;
  sessions: number;
  messages: number;
  total_tokens: number;
  avg_latency_ms: number | null;
  last_interaction: string | null;
}

export interface SecondMeServiceOptions {
  store: Store;
  /** `null`: no Agents Core configured (every invoke answers 503). */
  agents: AgentsClient | null;
  agentId: string;
  contextMessages: number;
  /** Invokes per user (SECONDME_RATE_PER_MINUTE), shared by every instance with Redis. */
  limit: Limit;
  /** One invoke at a time per user (default: this instance only). */
  serial?: SerialQueue;
  clock: Clock;
  log: Logger;
  ids?: IdGenerator;
}

const toEntry = (m: SecondmeMessage): HistoryEntry => ({ role: m.role, content: m.content, created_at: m.created_at, status: m.status });

/** The agent's input: the prompt, after the conversation so far (seed 000 §7 "prompt+context"). */
export function buildInput(context: SecondmeMessage[], prompt: string): string {
  if (context.length === 0) return prompt;
  const lines = context.map((m) => `${m.role}: ${m.content}`);
  return `Previous conversation:\n${lines.join("\n")}\n\nuser: ${prompt}`;
}

export class SecondMeService {
  private readonly ids: IdGenerator;
  private readonly serial: SerialQueue;

  constructor(private readonly o: SecondMeServiceOptions) {
    this.ids = o.ids ?? new IdGenerator();
    this.serial = o.serial ?? new LocalSerialQueue();
  }

  /**
   * Sends `prompt` to the user's Second Me.
   * @returns the reply and the conversation's last messages (oldest first)
   * @throws AppError `validation_failed`, `rate_limited` (nothing stored); `agents_core_not_configured`,
   *   `agents_core_unreachable`, `agents_core_timeout`, `agents_core_error`, `bad_agent_reply`
   *   (the prompt is stored as unanswered)
   */
  async invoke(userId: string, prompt: unknown): Promise<{ reply: string; history: HistoryEntry[] }> {
    const text = validatePrompt(prompt);
    const wait = await this.o.limit.take(userId);
    if (wait > 0) throw new AppError("rate_limited", `too many Second Me requests; retry in ${wait} s`, wait);
    return this.serial.run(userId, () => this.invokeNow(userId, text));
  }

  /** The user's last `limit` messages, oldest first (seed 000 §6.2 `GET /secondme/history`). */
  async history(userId: string, limit: number): Promise<HistoryEntry[]> {
    return (await this.o.store.listSecondmeMessages(userId, limit)).map(toEntry);
  }

  /** Sessions, messages, tokens, mean latency and last interaction (seed 001 `get_user_profile`). */
  async profile(userId: string): Promise<SecondMeProfile> {
    return { user_id: userId, ...(await this.o.store.secondmeStats(userId)) };
  }

  /** Deletes the user's conversation (seed 001 `clear_user_history`). @returns messages deleted */
  async clear(userId: string): Promise<number> {
    return this.o.store.clearSecondme(userId);
  }

  private async invokeNow(userId: string, prompt: string): Promise<{ reply: string; history: HistoryEntry[] }> {
    const { store, clock } = this.o;
    const now = clock.now();
    const sessionId = this.ids.make("secondmeSession", now);
    const session = await store.secondmeSession(userId, { id: sessionId, created_at: new Date(idTime("secondmeSession", sessionId)).toISOString() });
    const context = this.o.contextMessages > 0 ? (await store.listSecondmeMessages(userId, this.o.contextMessages)).filter((m) => m.status === "answered") : [];
    const question = this.message(session, userId, "user", prompt, "pending");
    await store.appendSecondmeMessage(question);

    if (!this.o.agents) {
      await store.setSecondmeStatus(question.id, "unanswered", "agents_core_not_configured");
      throw new AppError("agents_core_not_configured", "Second Me needs Agents Core: set AGENTS_SERVICE_URL (or AGENTS_TRANSPORT=nats)");
    }
    const t0 = performance.now();
    let reply;
    try {
      reply = await this.o.agents.invoke({ agentId: this.o.agentId, userId, input: buildInput(context, prompt) });
    } catch (err) {
      const code = err instanceof AppError ? err.code : "internal";
      await store.setSecondmeStatus(question.id, "unanswered", code).catch((e) => this.o.log.error("secondme: could not mark a prompt unanswered", { err: e }));
      throw err;
    }
    const latency = Math.round(performance.now() - t0);
    const answer = { ...this.message(session, userId, "assistant", reply.text, "answered"), tokens_used: reply.tokens, latency_ms: latency };
    await store.appendSecondmeMessage(answer);
    await store.setSecondmeStatus(question.id, "answered", null);
    const history = await store.listSecondmeMessages(userId, Math.max(2, this.o.contextMessages));
    return { reply: reply.text, history: history.map(toEntry) };
  }

  private message(session: string, userId: string, role: "user" | "assistant", content: string, status: SecondmeStatus): SecondmeMessage {
    const id = this.ids.make("secondmeMessage", this.o.clock.now());
    return {
      id, session_id: session, user_id: userId, role, content, tokens_used: null, latency_ms: null, status, error: null,
      created_at: new Date(idTime("secondmeMessage", id)).toISOString(),
    };
  }
}

/** Trims and checks a prompt (SPEC Text rules). @throws AppError `validation_failed` */
export function validatePrompt(prompt: unknown): string {
  return checkText(prompt, "prompt", 1, PROMPT_MAX_CHARS);
}
