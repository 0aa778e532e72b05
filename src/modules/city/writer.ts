/**
 * MessageWriter: the write path of room messages (seed 000 §4.1/§5.1: persist, record a
 * `room_message` feed event, then publish). Per room, writes are batched (group commit): a batch
 * goes to the store as soon as it forms, up to `pipelineDepth` (2) batches of a room at a time, and
 * while those are in flight new messages queue and go together in the next. The store numbers each
 * batch with the room's seq in the committing transaction. Answers are read, and batches published,
 * in the order they were sent. More than one batch in flight needs a store that applies appends in
 * call order (`Store.appendsInOrder`: SQLite's one writer thread); on PostgreSQL two in-flight
 * batches could take the room's lock the other way round and number a sender's second message
 * before its first, so there the depth is 1.
 *
 * Where the store commits on the caller's thread (SQLite's inline writer, `Store.commitsOnCaller`),
 * a commit blocks the event loop for its fsync, and taking each message as it is read would cost
 * one fsync per message. There the writer gathers a turn: what every room received in one turn of
 * the event loop is taken in the next `setImmediate` and committed in one transaction
 * (`Store.appendMessagesMany`), one fsync for all of it; the rooms are then published one by one.
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
  /** Batches of one room sent to the store before the first is answered (default 2; 1 = one at a time). */
  pipelineDepth?: number;
  /** Stage times (`queue`, `commit`, `publish`, `total`) and batch sizes. */
  stages?: StageObserver;
  /**
   * Asked when a room with nothing in flight gets a write: when it returns true, the room's batch
   * is taken one turn of the event loop later (`setImmediate`), together with every other room's
   * from the same turn, and they commit in one `appendMessagesMany` (default: never; the city
   * service passes `Store.commitsOnCaller`).
   */
  gatherTurn?: () => boolean;
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
  /** A room's run loop waiting for its queue or an in-flight batch, by room. */
  private readonly wakers = new Map<string, () => void>();
  private readonly idle: (() => void)[] = [];
  /** Rooms waiting for the gathered turn's commit, in the order their first write came. */
  private readonly turnRooms = new Set<string>();
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
      if (this.busy.has(draft.roomId)) this.wake(draft.roomId);
      else this.start(draft.roomId);
    });
  }

  /** Starts committing an idle room's queue: in the next gathered turn, or in its own run loop. */
  private start(roomId: string): void {
    if (this.opts.gatherTurn?.()) this.gather(roomId);
    else void this.run(roomId);
  }

  /** Puts a room in the next gathered turn (it counts as busy until that turn has settled it). */
  private gather(roomId: string): void {
    this.busy.add(roomId);
    if (this.turnRooms.size === 0) {
      setImmediate(() => this.commitTurn().catch((err) => this.opts.log.error("city: a gathered commit failed unexpectedly", { err })));
    }
    this.turnRooms.add(roomId);
  }

  /**
   * The gathered turn: every waiting room's batch in one transaction, then each room settled
   * (published, answered) in turn. When that commit fails, each room's batch is retried alone, so
   * one room's refused message fails only there. Never throws.
   */
  private async commitTurn(): Promise<void> {
    const rooms = [...this.turnRooms];
    this.turnRooms.clear();
    if (!this.opts.gatherTurn?.()) {
      // The store moved its commits off the loop meanwhile: these rooms go the usual way.
      for (const roomId of rooms) {
        this.busy.delete(roomId);
        void this.run(roomId);
      }
      return;
    }
    const batches = rooms.map((roomId) => ({ roomId, items: this.take(roomId) }));
    if (batches.length === 1) await this.commit(batches[0]!.roomId, batches[0]!.items);
    else {
      const started = performance.now();
      let firsts: number[] | null = null;
      try {
        firsts = await this.opts.store.appendMessagesMany(batches.map((b) => ({ roomId: b.roomId, batch: b.items.map((x) => x.w) })));
      } catch {
        firsts = null; // each room alone below: the failure is reported (or split) where it belongs
      }
      for (let i = 0; i < batches.length; i++) {
        const { roomId, items } = batches[i]!;
        if (firsts) await this.settle(roomId, items, started, Promise.resolve(firsts[i]!));
        else await this.commit(roomId, items);
      }
    }
    for (const roomId of rooms) {
      this.busy.delete(roomId);
      const q = this.queues.get(roomId);
      if (q && q.length > 0) this.start(roomId);
      else this.queues.delete(roomId);
    }
    if (this.busy.size === 0) for (const r of this.idle.splice(0)) r();
  }

  /** Takes a room's next batch off its queue (at most `maxBatch`), numbered later by the store. */
  private take(roomId: string): { p: Pending; w: MessageWrite }[] {
    const taken = this.queues.get(roomId)?.splice(0, this.opts.maxBatch ?? 256) ?? [];
    const stages = this.opts.stages;
    if (stages) {
      const at = performance.now();
      for (const p of taken) if (p.draft.admittedAt !== undefined) stages.observe("queue", (at - p.draft.admittedAt) / 1000);
    }
    return taken.map((p) => ({ p, w: this.materialise(p.draft) }));
  }

  /** Refuses new writes and resolves once every queued write has been committed or failed. */
  async drain(): Promise<void> {
    this.closed = true;
    if (this.busy.size === 0) return;
    await new Promise<void>((r) => this.idle.push(r));
  }

  private async run(roomId: string): Promise<void> {
    this.busy.add(roomId);
    const depth = Math.max(1, this.opts.pipelineDepth ?? 2);
    // Batches are handed to the store as soon as they form, up to `depth` at a time, so a batch
    // never waits for the main thread to read the previous commit's answer; answers are taken (and
    // publications made) strictly in the order the batches were sent.
    let chain: Promise<void> = Promise.resolve();
    let inFlight = 0;
    try {
      for (;;) {
        const q = this.queues.get(roomId);
        if (!q || q.length === 0 || inFlight >= depth) {
          if (inFlight === 0 && (!q || q.length === 0)) break;
          await new Promise<void>((r) => this.wakers.set(roomId, r));
          continue;
        }
        const items = this.take(roomId);
        const started = performance.now();
        const appended = this.opts.store.appendMessages(roomId, items.map((x) => x.w));
        appended.catch(() => {}); // read (and handled) in settle, in order
        inFlight++;
        chain = chain
          .then(() => this.settle(roomId, items, started, appended))
          .finally(() => {
            inFlight--;
            this.wake(roomId);
          });
      }
    } finally {
      this.wakers.delete(roomId);
      this.queues.delete(roomId);
      this.busy.delete(roomId);
      if (this.busy.size === 0) for (const r of this.idle.splice(0)) r();
    }
  }

  /** Lets a room's run loop look at its queue again (a write arrived, or a batch settled). */
  private wake(roomId: string): void {
    const w = this.wakers.get(roomId);
    if (!w) return;
    this.wakers.delete(roomId);
    w();
  }

  /**
   * Commits a batch and publishes it. A batch the store refuses for its data (a constraint or a
   * value it cannot store, not an outage) is split in halves and each retried, so only the
   * offending message is refused and nobody else's write fails with it.
   */
  private async commit(roomId: string, items: { p: Pending; w: MessageWrite }[]): Promise<void> {
    const started = performance.now();
    await this.settle(roomId, items, started, this.opts.store.appendMessages(roomId, items.map((x) => x.w)));
  }

  /** Reads a sent batch's answer: publishes and resolves it, or rejects it (splitting a refused batch). Never throws. */
  private async settle(roomId: string, items: { p: Pending; w: MessageWrite }[], started: number, appended: Promise<number>): Promise<void> {
    let first: number;
    try {
      first = await appended;
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

