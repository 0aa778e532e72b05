/**
 * TypeBox schemas of the City HTTP API (seed 000 §4, SPEC "HTTP API"): request validation and
 * the OpenAPI document at /swagger.
 */
import { t } from "elysia";
import { SLUG_PATTERN } from "../../ids.ts";
import { TEXT_PATTERN } from "../../text.ts";

const Nullable = <T extends Parameters<typeof t.Union>[0][number]>(s: T) => t.Union([s, t.Null()]);
const Timestamp = t.String({ format: "date-time", description: "ISO-8601 UTC, milliseconds" });

export const RoomModel = t.Object({
  id: t.String({ examples: ["room_city_general"] }),
  slug: t.String({ examples: ["general"] }),
  name: t.String({ examples: ["General"] }),
  description: Nullable(t.String()),
  is_default: t.Boolean(),
  created_at: Timestamp,
  created_by: Nullable(t.String()),
  matrix_room_id: Nullable(t.String()),
  matrix_room_alias: Nullable(t.String()),
});

export const RoomListItemModel = t.Composite([
  RoomModel,
  t.Object({
    members_online: t.Integer({ minimum: 0, description: "distinct users with an open room socket" }),
    last_event: Nullable(Timestamp),
  }),
]);

export const MessageModel = t.Object({
  id: t.String({ examples: ["m_city_01JD4Q1W3YB4T6Z0R9J8K7H5G2"] }),
  room_id: t.String(),
  seq: t.Integer({ minimum: 1, description: "the message's number in its room: 1, 2, 3, … with no gaps, the same on every instance" }),
  author_user_id: Nullable(t.String()),
  author_agent_id: Nullable(t.String()),
  body: t.String(),
  created_at: Timestamp,
});

export const FeedEventModel = t.Object({
  id: t.String({ examples: ["evt_city_01JD4Q1W3YB4T6Z0R9J8K7H5G2"] }),
  kind: t.Union([t.Literal("room_message"), t.Literal("agent_reply"), t.Literal("system")]),
  room_id: Nullable(t.String()),
  user_id: Nullable(t.String()),
  agent_id: Nullable(t.String()),
  payload: t.Record(t.String(), t.Unknown()),
  created_at: Timestamp,
});

export const RoomDetailModel = t.Object({
  room: RoomModel,
  messages: t.Array(MessageModel, { description: "last 50, oldest first" }),
  members_online: t.Integer({ minimum: 0 }),
});

export const CreateRoomBody = t.Object(
  {
    name: t.String({ minLength: 1, maxLength: 100, pattern: TEXT_PATTERN, description: "1 to 100 characters after trimming; no control characters but \\n and \\t" }),
    slug: t.String({ pattern: SLUG_PATTERN }),
    description: t.Optional(Nullable(t.String({ maxLength: 1000, pattern: TEXT_PATTERN }))),
    matrix_room_id: t.Optional(Nullable(t.String({ maxLength: 512, description: "admins only: the Matrix room (`!id:server`) whose presence feeds this room (seed 003)" }))),
    matrix_room_alias: t.Optional(Nullable(t.String({ maxLength: 512, description: "admins only: the Matrix alias (`#alias:server`), resolved to a room id by the aggregator" }))),
  },
  { additionalProperties: false },
);

export const UpdateRoomBody = t.Object(
  {
    name: t.Optional(t.String({ minLength: 1, maxLength: 100, pattern: TEXT_PATTERN })),
    description: t.Optional(Nullable(t.String({ maxLength: 1000, pattern: TEXT_PATTERN }))),
    matrix_room_id: t.Optional(Nullable(t.String({ maxLength: 512, description: "`!id:server`; null clears it" }))),
    matrix_room_alias: t.Optional(Nullable(t.String({ maxLength: 512, description: "`#alias:server`; null clears it" }))),
  },
  { additionalProperties: false, description: "Absent fields keep their value; at least one is needed" },
);

export const PostMessageBody = t.Object(
  { body: t.String({ description: "1 to 4000 characters after trimming; no control characters but \\n and \\t" }) },
  { additionalProperties: false },
);

export const RoomParams = t.Object({ room_id: t.String({ examples: ["room_city_general"] }) });

export const RoomsQuery = t.Object({
  limit: t.Optional(t.Integer({ minimum: 1, maximum: 200, default: 50 })),
  offset: t.Optional(t.Integer({ minimum: 0, maximum: 1_000_000, default: 0 })),
});

export const MessagesQuery = t.Object({
  before: t.Optional(t.String({ description: "a message seq or id: return the page just older than it" })),
  limit: t.Optional(t.Integer({ minimum: 1, maximum: 200, default: 50 })),
});

export const FeedQuery = t.Object({
  before: t.Optional(t.String({ description: "a feed event id: return events older than it" })),
  limit: t.Optional(t.Integer({ minimum: 1, maximum: 100, default: 20 })),
});

export const MembershipModel = t.Object({
  ok: t.Literal(true),
  room_id: t.String(),
  user_id: t.String(),
  announced: t.Boolean({ description: "false when the room has more than ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS users: no event was sent" }),
});

export const RoomMappingModel = t.Object({
  id: t.String(),
  slug: t.String(),
  matrix_room_id: Nullable(t.String()),
  matrix_room_alias: Nullable(t.String()),
});

export const ErrorModel = t.Object({ error: t.Object({ code: t.String(), message: t.String() }) });
