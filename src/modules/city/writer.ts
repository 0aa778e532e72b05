/**
 * MessageWriter: the write path of room messages (seed 000 §4.1/§5.1: persist, record a
 * `room_message` feed event, then publish). Per room, writes are serialised and batched: while one
 * batch is being committed, new messages queue, and the next commit takes them all at once (group
 * commit). The store numbers each batch with the room's seq in the committing transaction; the
 * writer publishes batches in commit order, so on this instance seq order = publish order, and
 * room streams put other instances' messages in between in seq order.
 */
import type { Clock } from "../../clock.ts";
import { AppError } from "../../engine/errors.ts";
import { IdGenerator, idTime } from "../../ids.ts";
import type { StageObserver } from "../../engine/latency.ts";
import type { Logger } from "../../log.ts";
import { isDataError } from "../../storage/data-errors.ts";
import type { FeedEvent, Message, MessageWrite, NewMessage, Store } from "../../storage/store.ts";

export interface MessageWriterOptions {
  store: Store;
  ids: IdGenerator;
  clock: Clock;
  log: Logger;
  /** Called once per committed batch (numbered, in seq order), before any writer promise resolves. */
  onCommitted(messages: Message[], batch: MessageWrite[]): void;
  /** Most messages in one commit. */
  maxBatch?: number;
  /** Stage times (`queue`, `commit`, `publish`, `total`) and batch sizes. */
  stages?: StageObserver;
}

/** What a writer of a message says; `body` must already be validated and trimmed. */
export interface MessageDraft {
  roomId: string;
  authorUserId: string | null;
  authorAgentId: string | null;
  body: string;
  /** `performance.now()` when its frame or request was read, and when it was admitted (for the stage histograms). */
  receivedAt?: number;
  admittedAt?: number;
}

interface Pending {
  draft: MessageDraft;
  resolve(m: Message): void;
  reject(e: unknown): void;
}

const SNIPPET_CHARS = 140;

/** The feed payload of seed 000 §4.1 (`body`, `snippet`) plus the message id it records. */
export function feedPayload(message: NewMessage): Record<string, unknown> {
  const chars = [...message.body];
  const snippet = chars.length > SNIPPET_CHARS ? chars.slice(0, SNIPPET_CHARS - 1).join("") + "…" : message.body;
  return { body: message.body, snippet, message_id: message.id };
}

export class MessageWriter {
  private readonly queues = new Map<string, Pending[]>();
  private readonly busy = new Set<string>();
  private readonly idle: (() => void)[] = [];
  private closed = false;

  constructor(private readonly opts: MessageWriterOptions) {}

  /**
   * Queues a message for its room's next commit.
   * @returns the stored message, once it is durable and published
   * @throws AppError `store_unavailable` when the commit failed (nothing of it was written);
   *   `shutting_down` after {@link drain} began
   */
  write(draft: MessageDraft): Promise<Message> {
    if (this.closed) return Promise.reject(new AppError("shutting_down", "server is shutting down"));
    return new Promise<Message>((resolve, reject) => {
      let q = this.queues.get(draft.roomId);
      if (!q) this.queues.set(draft.roomId, (q = []));
      q.push({ draft, resolve, reject });
      if (!this.busy.has(draft.roomId)) void this.run(draft.roomId);
    });
  }

  /** Refuses new writes and resolves once every queued write has been committed or failed. */
  async drain(): Promise<void> {
    this.closed = true;
    if (this.busy.size === 0) return;
    await new Promise<void>((r) => this.idle.push(r));
  }

  private async run(roomId: string): Promise<void> {
    this.busy.add(roomId);
    const max = this.opts.maxBatch ?? 256;
    try {
      for (;;) {
        const q = this.queues.get(roomId);
        if (!q || q.length === 0) break;
        const taken = q.splice(0, max);
        const stages = this.opts.stages;
        if (stages) {
          const at = performance.now();
          for (const p of taken) if (p.draft.admittedAt !== undefined) stages.observe("queue", (at - p.draft.admittedAt) / 1000);
        }
        await this.commit(roomId, taken.map((p) => ({ p, w: this.materialise(p.draft) })));
      }
    } finally {
      this.queues.delete(roomId);
      this.busy.delete(roomId);
      if (this.busy.size === 0) for (const r of this.idle.splice(0)) r();
    }
  }

  /**
   * Commits a batch and publishes it. A batch the store refuses for its data (a constraint or a
   * value it cannot store, not an outage) is split in halves and each retried, so only the
   * offending message is refused and nobody else's write fails with it.
   */
  private async commit(roomId: string, items: { p: Pending; w: MessageWrite }[]): Promise<void> {
    let first: number;
    const started = performance.now();
    try {
      first = await this.opts.store.appendMessages(roomId, items.map((x) => x.w));
    } catch (err) {
      if (isDataError(err) && items.length > 1) {
        const mid = items.length >> 1;
        await this.commit(roomId, items.slice(0, mid));
        await this.commit(roomId, items.slice(mid));
        return;
      }
      if (isDataError(err)) this.opts.log.warn("city: the store refused a message's content", { room_id: roomId, err });
      else if (!(err instanceof AppError)) this.opts.log.error("city: message commit failed", { room_id: roomId, messages: items.length, err });
      const e = isDataError(err)
        ? new AppError("validation_failed", "the store refused this message's content; nothing was saved")
        : new AppError("store_unavailable", "the message store is unavailable; nothing was saved", 1);
      for (const x of items) x.p.reject(e);
      return;
    }
    const committed = performance.now();
    const messages: Message[] = items.map((x, i) => ({ ...x.w.message, seq: first + i }));
    try {
      this.opts.onCommitted(messages, items.map((x) => x.w));
    } catch (err) {
      this.opts.log.error("city: publish after commit failed", { room_id: roomId, err });
    }
    const stages = this.opts.stages;
    if (stages) {
      const published = performance.now();
      stages.batch(items.length);
      stages.observe("commit", (committed - started) / 1000);
      stages.observe("publish", (published - committed) / 1000);
      for (const x of items) if (x.p.draft.receivedAt !== undefined) stages.observe("total", (published - x.p.draft.receivedAt) / 1000);
    }
    for (let i = 0; i < items.length; i++) items[i]!.p.resolve(messages[i]!);
  }

  private materialise(d: MessageDraft): MessageWrite {
    const id = this.opts.ids.make("message", this.opts.clock.now());
    const created_at = new Date(idTime("message", id)).toISOString();
    const message: NewMessage = { id, room_id: d.roomId, author_user_id: d.authorUserId, author_agent_id: d.authorAgentId, body: d.body, created_at };
    const event: FeedEvent = {
      id: this.opts.ids.make("feedEvent", this.opts.clock.now()),
      kind: "room_message",
      room_id: d.roomId,
      user_id: d.authorUserId,
      agent_id: d.authorAgentId,
      payload: feedPayload(message),
      created_at,
    };
    return { message, event };
  }
}

