/**
 * City HTTP controller (seed 000 §4.1, seed 001 routes, seed 003 `GET /internal/city/rooms`).
 * Every route delegates to {@link CityService}; errors are AppErrors mapped by the error plugin.
 */
import { Elysia, t } from "elysia";
import type { Principal, TokenVerifier } from "../../auth/tokens.ts";
import { AppError } from "../../engine/errors.ts";
import { ROOM_ID_RE } from "../../ids.ts";
import { authPlugin, requireUser } from "../../plugins/auth.ts";
import {
  CreateRoomBody, ErrorModel, FeedEventModel, FeedQuery, MembershipModel, MessageModel, MessagesQuery, PostMessageBody,
  RoomDetailModel, RoomListItemModel, RoomMappingModel, RoomModel, RoomParams, RoomsQuery, UpdateRoomBody,
} from "./model.ts";
import type { CityService } from "./service.ts";

/** A syntactically impossible room id is simply an unknown room. */
function roomId(raw: string): string {
  if (!ROOM_ID_RE.test(raw)) throw new AppError("room_not_found", `room ${raw} does not exist`);
  return raw;
}

const errors = { 400: ErrorModel, 401: ErrorModel, 403: ErrorModel, 404: ErrorModel, 409: ErrorModel, 429: ErrorModel, 503: ErrorModel };

/**
 * @param isAdmin whether a verified principal may change rooms and their Matrix mapping (SPEC:
 *   a user listed in CITY_ADMIN_USERS, or a token with `role: "admin"`)
 */
export function cityController(city: CityService, verifier: TokenVerifier, isAdmin: (p: Principal) => boolean) {
  /** Handler of `POST /city/rooms/{id}/join|leave` (seed 001). */
  const announce =
    (event: "room.join" | "room.leave") =>
    async ({ params, principal }: { params: { room_id: string }; principal: Principal | null }) => {
      const user = requireUser(principal);
      const id = roomId(params.room_id);
      const announced = await city.announceMembership(id, user, event);
      return { ok: true as const, room_id: id, user_id: user, announced };
    };
  return new Elysia({ name: "city" })
    .use(authPlugin(verifier))
    .get("/city/rooms", ({ query }) => city.listRooms(query.limit ?? 50, query.offset ?? 0), {
      query: RoomsQuery,
      response: { 200: t.Array(RoomListItemModel), ...errors },
      detail: { tags: ["City"], summary: "List rooms with members_online and last_event" },
    })
    .post(
      "/city/rooms",
      async ({ body, principal, set }) => {
        const room = await city.createRoom(requireUser(principal), body, principal !== null && isAdmin(principal));
        set.status = 201;
        return room;
      },
      {
        body: CreateRoomBody,
        response: { 201: RoomModel, ...errors },
        detail: {
          tags: ["City"],
          summary: "Create a room (id = room_city_{slug}); 409 when the slug is taken; the Matrix fields are for admins only (403 otherwise)",
          security: [{ bearer: [] }],
        },
      },
    )
    .patch(
      "/city/rooms/:room_id",
      ({ params, body, principal }) => {
        const user = requireUser(principal);
        return city.updateRoom(user, roomId(params.room_id), body, isAdmin(principal!));
      },
      {
        params: RoomParams,
        body: UpdateRoomBody,
        response: { 200: RoomModel, ...errors },
        detail: {
          tags: ["City"],
          summary: "Change a room's name, description or Matrix mapping (admins only: CITY_ADMIN_USERS or a token with role \"admin\"; others get 403 forbidden)",
          security: [{ bearer: [] }],
        },
      },
    )
    .get("/city/rooms/:room_id", ({ params }) => city.getRoomDetail(roomId(params.room_id)), {
      params: RoomParams,
      response: { 200: RoomDetailModel, ...errors },
      detail: { tags: ["City"], summary: "A room with its last 50 messages (oldest first) and members_online" },
    })
    .post(
      "/city/rooms/:room_id/messages",
      async ({ params, body, principal, set }) => {
        const user = requireUser(principal);
        const message = await city.postMessage(roomId(params.room_id), user, body.body);
        set.status = 201;
        return message;
      },
      {
        params: RoomParams,
        body: PostMessageBody,
        response: { 201: MessageModel, ...errors },
        detail: {
          tags: ["City"],
          summary: "Post a message: durable with its feed event before 201, then room.message to the room's sockets",
          security: [{ bearer: [] }],
        },
      },
    )
    .get("/city/rooms/:room_id/messages", ({ params, query }) => city.listMessages(roomId(params.room_id), query.before, query.limit ?? 50), {
      params: RoomParams,
      query: MessagesQuery,
      response: { 200: t.Array(MessageModel), ...errors },
      detail: { tags: ["City"], summary: "Messages oldest first; `before` pages back through history" },
    })
    .post("/city/rooms/:room_id/join", announce("room.join"), {
      params: RoomParams,
      response: { 200: MembershipModel, ...errors },
      detail: { tags: ["City"], summary: "Announce room.join to the room's sockets", security: [{ bearer: [] }] },
    })
    .post("/city/rooms/:room_id/leave", announce("room.leave"), {
      params: RoomParams,
      response: { 200: MembershipModel, ...errors },
      detail: { tags: ["City"], summary: "Announce room.leave to the room's sockets", security: [{ bearer: [] }] },
    })
    .get("/city/feed", ({ query }) => city.listFeed(query.before, query.limit ?? 20), {
      query: FeedQuery,
      response: { 200: t.Array(FeedEventModel), ...errors },
      detail: { tags: ["City"], summary: "City feed, newest first" },
    })
    .get("/internal/city/rooms", () => city.listRoomMappings(), {
      response: { 200: t.Array(RoomMappingModel) },
      detail: { tags: ["Internal"], summary: "Slug and Matrix mapping of every room (for the presence aggregator, seed 003)" },
    });
}
