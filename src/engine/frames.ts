/**
 * Every socket frame, in and out, as a TypeBox schema: the one description the server's encoders
 * are checked against (`test/unit/frames.test.ts`), the typed client's frame types are derived from
 * (`src/client/`, type-only, so no server code reaches a browser) and `/asyncapi.json` is generated
 * from (`asyncapi.ts`). Shapes are the seeds' (seed 000 §5, seed 003 §6.2, seed 004 §4.6) and
 * SPEC "WebSockets".
 */
import { Type as T, type Static, type TSchema } from "@sinclair/typebox";
import { ERROR_STATUS } from "./errors.ts";

const Nullable = <S extends TSchema>(s: S) => T.Union([s, T.Null()]);
const IsoTime = T.String({ format: "date-time", description: "ISO-8601 UTC" });
const Status = T.Union([T.Literal("online"), T.Literal("offline")]);
/** Where a frame names its room it may leave it out; if given it must be the socket's room. */
const OptionalRoom = T.Optional(T.String({ description: "the socket's room id; any other gets `room_mismatch`" }));

// ---- shared ----------------------------------------------------------------------------------

/** In, on every socket: replaces the socket's token (same user only). */
export const AuthRefreshFrame = T.Object({ event: T.Literal("auth.refresh"), token: T.String({ description: "a fresh JWT for the same user" }) }, { title: "auth.refresh" });
/** Out, on every socket: the answer to an accepted `auth.refresh`. */
export const AuthRefreshedFrame = T.Object({ event: T.Literal("auth.refreshed"), expires_at: IsoTime }, { title: "auth.refreshed" });
/** Out, on every socket: a refused frame or a condition the client must know of; nothing changed. */
export const ErrorFrame = T.Object(
  {
    event: T.Literal("error"),
    code: T.Union(Object.keys(ERROR_STATUS).map((c) => T.Literal(c)), { description: "one of the error codes (README \"Error codes\")" }),
    message: T.String(),
  },
  { title: "error" },
);

// ---- room socket: /ws/city/rooms/{room_id} ---------------------------------------------------

/** A message as room frames carry it (seed 000 §4.1 plus its room `seq`). */
export const FrameMessage = T.Object({
  id: T.String({ description: "m_city_<ULID>" }),
  seq: T.Integer({ minimum: 1, description: "its number in the room: the order and the recovery cursor" }),
  author_user_id: Nullable(T.String()),
  author_agent_id: Nullable(T.String()),
  body: T.String(),
  created_at: IsoTime,
});

export const RoomMessageFrame = T.Object({ event: T.Literal("room.message"), room_id: T.String(), message: FrameMessage }, { title: "room.message" });
export const RoomJoinFrame = T.Object({ event: T.Literal("room.join"), room_id: T.String(), user_id: T.String() }, { title: "room.join" });
export const RoomLeaveFrame = T.Object({ event: T.Literal("room.leave"), room_id: T.String(), user_id: T.String() }, { title: "room.leave" });
export const RoomUserPresenceFrame = T.Object({ event: T.Literal("room.presence"), room_id: T.String(), user_id: T.String(), status: Status }, { title: "room.presence (user)" });
export const RoomTypingFrame = T.Object({ event: T.Literal("room.typing"), room_id: T.String(), user_id: T.String() }, { title: "room.typing" });

export const RoomSendFrame = T.Object({ event: T.Literal("room.message.send"), room_id: OptionalRoom, body: T.String({ description: "1 to 4,000 characters after trimming" }) }, { title: "room.message.send" });
export const RoomJoinRequestFrame = T.Object({ event: T.Literal("room.join"), room_id: OptionalRoom }, { title: "room.join (request)" });
export const RoomLeaveRequestFrame = T.Object({ event: T.Literal("room.leave"), room_id: OptionalRoom }, { title: "room.leave (request)" });
export const RoomTypingRequestFrame = T.Object({ event: T.Literal("room.typing"), room_id: OptionalRoom }, { title: "room.typing (request)" });

// ---- presence socket: /ws/city/presence ------------------------------------------------------

/** One room's numbers (seed 003 §6.2). */
export const RoomCounts = T.Object({ room_slug: T.String(), online_count: T.Integer({ minimum: 0 }), typing_count: T.Integer({ minimum: 0 }) });
export const PresenceSnapshotFrame = T.Object(
  {
    type: T.Literal("snapshot"),
    rooms: T.Array(RoomCounts),
    matrix_presence: T.Optional(T.Union([T.Literal("ok"), T.Literal("unknown")], { description: "only with a Matrix homeserver configured" })),
  },
  { title: "snapshot (presence)" },
);
export const RoomPresenceCountsFrame = T.Object(
  { type: T.Literal("room.presence"), room_slug: T.String(), online_count: T.Integer({ minimum: 0 }), typing_count: T.Integer({ minimum: 0 }) },
  { title: "room.presence (counts)" },
);
export const PresenceUpdateFrame = T.Object({ event: T.Literal("presence.update"), user_id: T.String(), status: Status }, { title: "presence.update" });
export const HeartbeatFrame = T.Object(
  { event: T.Literal("presence.heartbeat"), user_id: T.Optional(T.String({ description: "must be the token's subject" })) },
  { title: "presence.heartbeat" },
);

// ---- living map stream: /living-map/stream ---------------------------------------------------

const Source = T.Object({
  name: T.String(),
  status: T.Union([T.Literal("ok"), T.Literal("stale"), T.Literal("unavailable"), T.Literal("not_configured")]),
  fetched_at: Nullable(IsoTime),
  error: T.Optional(T.String()),
});
/** The scene (seed 004 §4.2) as the snapshot route and the stream's first frame carry it. */
export const LivingMapSnapshot = T.Object({
  generated_at: IsoTime,
  layers: T.Object({
    city: T.Record(T.String(), T.Unknown()),
    space: T.Object({ planets: T.Array(T.Unknown()), nodes: T.Array(T.Unknown()) }),
    nodes: T.Object({ items: T.Array(T.Unknown()) }),
    agents: T.Object({ items: T.Array(T.Unknown()) }),
  }),
  meta: T.Object({ source_services: T.Array(T.String()), sources: T.Array(Source), version: T.Integer(), last_event_id: Nullable(T.String()) }),
});
export const LivingMapSnapshotFrame = T.Composite([T.Object({ kind: T.Literal("snapshot") }), LivingMapSnapshot], { title: "snapshot (living map)" });
export const LivingMapEventFrame = T.Object(
  { kind: T.Literal("event"), id: T.String({ description: "the event's id: the `since` cursor" }), event_type: T.String({ description: "the NATS subject" }), timestamp: IsoTime, payload: T.Record(T.String(), T.Unknown()) },
  { title: "event (living map)" },
);

// ---- the sockets -----------------------------------------------------------------------------

/** One socket route: where it is, what it takes, what it sends. */
export interface SocketChannel {
  address: string;
  description: string;
  /** Query parameters the upgrade reads. */
  query: Record<string, string>;
  /** Frames the client sends. */
  accepts: Record<string, TSchema>;
  /** Frames the server sends. */
  sends: Record<string, TSchema>;
}

/** Every socket route and every frame in and out (the AsyncAPI document is generated from it). */
export const SOCKETS = {
  room: {
    address: "/ws/city/rooms/{room_id}",
    description: "A city room (seed 000 §5.1): live messages in seq order, membership, typing. Reads without a token; sending needs one.",
    query: { token: "a JWT (or an Authorization header); without it the socket only reads", since: "the last seq (or message id) seen: replays what was missed first" },
    accepts: { RoomSendFrame, RoomJoinRequestFrame, RoomLeaveRequestFrame, RoomTypingRequestFrame, AuthRefreshFrame },
    sends: { RoomMessageFrame, RoomJoinFrame, RoomLeaveFrame, RoomUserPresenceFrame, RoomTypingFrame, AuthRefreshedFrame, ErrorFrame },
  },
  presence: {
    address: "/ws/city/presence",
    description: "City presence (seed 000 §5.2, seed 003 §6.2): room numbers and per-user transitions. Needs a token.",
    query: { token: "a JWT (or an Authorization header)", events: "`counts`: only the room numbers, no presence.update" },
    accepts: { HeartbeatFrame, AuthRefreshFrame },
    sends: { PresenceSnapshotFrame, RoomPresenceCountsFrame, PresenceUpdateFrame, AuthRefreshedFrame, ErrorFrame },
  },
  livingMap: {
    address: "/living-map/stream",
    description: "The Living Map (seed 004 §4.6): a snapshot, then every event. Needs a token unless LIVING_MAP_PUBLIC=true.",
    query: { token: "a JWT (or an Authorization header)", since: "the last event id seen: replays what was missed (or sends a fresh snapshot)" },
    accepts: { AuthRefreshFrame },
    sends: { LivingMapSnapshotFrame, LivingMapEventFrame, AuthRefreshedFrame, ErrorFrame },
  },
} satisfies Record<string, SocketChannel>;

export type AuthRefreshed = Static<typeof AuthRefreshedFrame>;
export type ErrorEvent = Static<typeof ErrorFrame>;
export type RoomMessage = Static<typeof RoomMessageFrame>;
export type RoomServerFrame =
  | RoomMessage
  | Static<typeof RoomJoinFrame>
  | Static<typeof RoomLeaveFrame>
  | Static<typeof RoomUserPresenceFrame>
  | Static<typeof RoomTypingFrame>
  | AuthRefreshed
  | ErrorEvent;
export type RoomClientFrame =
  | Static<typeof RoomSendFrame>
  | Static<typeof RoomJoinRequestFrame>
  | Static<typeof RoomLeaveRequestFrame>
  | Static<typeof RoomTypingRequestFrame>
  | Static<typeof AuthRefreshFrame>;
export type PresenceSnapshot = Static<typeof PresenceSnapshotFrame>;
export type RoomCountsEvent = Static<typeof RoomPresenceCountsFrame>;
export type PresenceServerFrame = PresenceSnapshot | RoomCountsEvent | Static<typeof PresenceUpdateFrame> | AuthRefreshed | ErrorEvent;
export type PresenceClientFrame = Static<typeof HeartbeatFrame> | Static<typeof AuthRefreshFrame>;
export type LivingMapSnapshotData = Static<typeof LivingMapSnapshot>;
export type LivingMapEvent = Static<typeof LivingMapEventFrame>;
export type LivingMapServerFrame = Static<typeof LivingMapSnapshotFrame> | LivingMapEvent | AuthRefreshed | ErrorEvent;
