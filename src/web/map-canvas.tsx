/**
 * The Living Map in 2D (seed 002 "Lite 2D UI"): the city at the centre with its rooms, DAO planets
 * on the inner ring, nodes (size by CPU, colour by status) on the middle ring, agents on the outer
 * ring. Positions come from each entity's id, so they stay put between snapshots; the rings turn
 * slowly and the entity the last event named flashes, so the picture moves with the stream.
 * Drawn at most 30 times a second while a flash fades and 5 times a second otherwise (the rings
 * turn a few degrees a second), and between two idle frames nothing is scheduled but a timer: an
 * animation-frame callback asked for every frame keeps the browser producing 60 frames a second
 * even when it draws nothing (headless Chromium, one signed-in page left open for 10 s: ~80 ms
 * of the browser's CPU a second, ~50 with the timer). A map left open costs a laptop little.
 */
import { useEffect, useRef } from "react";
import type { LivingMapEvent, LivingMapSnapshot } from "../client/index.ts";
import { eventEntityId } from "../client/living-map.ts";

type Entity = { id: string; name?: string | null; status?: string; metrics?: { cpu?: number } };

/** A stable offset in [0, 2π) from an id (FNV-1a), so each ring starts somewhere of its own. */
function angleOf(id: string): number {
  let h = 2166136261;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619);
  return ((h >>> 0) / 4294967296) * Math.PI * 2;
}

/** Angles spread evenly around a ring, by id order (stable while the set is). */
function spread<T extends { id: string }>(items: T[], ring: string): Map<string, number> {
  const ids = items.map((i) => i.id).sort();
  const start = angleOf(ring);
  return new Map(ids.map((id, i) => [id, start + (i / Math.max(1, ids.length)) * Math.PI * 2]));
}

/** Least time between two frames while a flash fades, and while nothing but the rings moves, ms. */
const FRAME_MS_FADING = 33;
const FRAME_MS_IDLE = 200;

const STATUS_COLOUR: Record<string, string> = { online: "#4ade80", active: "#4ade80", ok: "#4ade80", busy: "#fbbf24", degraded: "#fbbf24", warning: "#fbbf24", offline: "#f87171", error: "#f87171" };
const colour = (status: string | undefined) => STATUS_COLOUR[status ?? ""] ?? "#8a93ab";

export function MapCanvas({ snapshot, lastEvent }: { snapshot: LivingMapSnapshot | null; lastEvent: LivingMapEvent | null }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const state = useRef({ snapshot, flashes: new Map<string, number>(), wake: () => {} });
  state.current.snapshot = snapshot;
  useEffect(() => {
    const id = lastEvent ? eventEntityId(lastEvent) : null;
    if (id) state.current.flashes.set(id, performance.now());
    state.current.wake();
  }, [lastEvent]);
  useEffect(() => state.current.wake(), [snapshot]);

  useEffect(() => {
    let frame = 0;
    // Ring positions are worked out once per snapshot, not per frame.
    let laidOut: { snapshot: LivingMapSnapshot; rooms: Map<string, number>; planets: Map<string, number>; nodes: Map<string, number>; agents: Map<string, number> } | null = null;
    const layout = (s: LivingMapSnapshot) => {
      if (laidOut?.snapshot !== s) {
        laidOut = {
          snapshot: s,
          rooms: spread((s.layers.city as { rooms?: Entity[] }).rooms ?? [], "rooms"),
          planets: spread(s.layers.space.planets as Entity[], "planets"),
          nodes: spread(s.layers.nodes.items as Entity[], "nodes"),
          agents: spread(s.layers.agents.items as Entity[], "agents"),
        };
      }
      return laidOut;
    };
    let drawnAt = -Infinity;
    let drawnVersion: LivingMapSnapshot | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    /** The next frame: the next animation frame while a flash fades, else one after FRAME_MS_IDLE. */
    const schedule = () => {
      if (frame || timer !== undefined) return;
      if (state.current.flashes.size > 0) frame = requestAnimationFrame(draw);
      else timer = setTimeout(() => ((timer = undefined), (frame = requestAnimationFrame(draw))), FRAME_MS_IDLE);
    };
    // Something new to show (a snapshot, an event to flash): draw at the next animation frame.
    state.current.wake = () => {
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      if (!frame) frame = requestAnimationFrame(draw);
    };
    const draw = (now: number) => {
      frame = 0;
      try {
        paint(now);
      } finally {
        schedule();
      }
    };
    const paint = (now: number) => {
      const fading = state.current.flashes.size > 0;
      const fresh = state.current.snapshot !== drawnVersion;
      if (!fresh && now - drawnAt < (fading ? FRAME_MS_FADING : FRAME_MS_IDLE) - 1) return;
      drawnAt = now;
      drawnVersion = state.current.snapshot;
      const el = canvas.current;
      const ctx = el?.getContext("2d");
      if (!el || !ctx) return;
      const w = el.clientWidth;
      const h = el.clientHeight;
      if (el.width !== w * devicePixelRatio || el.height !== h * devicePixelRatio) {
        el.width = w * devicePixelRatio;
        el.height = h * devicePixelRatio;
      }
      ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const s = state.current.snapshot;
      if (!s) return;
      const at = layout(s);
      const cx = w / 2;
      const cy = h / 2;
      const r = Math.min(w, h) / 2 - 16;
      const turn = now / 60_000;
      const flash = (entity: string) => {
        const at = state.current.flashes.get(entity);
        if (at === undefined) return 0;
        const k = 1 - (now - at) / 1200;
        if (k <= 0) state.current.flashes.delete(entity);
        return Math.max(0, k);
      };
      const ring = (radius: number) => {
        ctx.strokeStyle = "rgba(138,147,171,.15)";
        ctx.beginPath();
        ctx.arc(cx, cy, radius, 0, Math.PI * 2);
        ctx.stroke();
      };
      const dot = (entity: string, base: number, radius: number, size: number, fill: string, speed: number, label?: string | null) => {
        const a = base + turn * speed;
        const x = cx + Math.cos(a) * radius;
        const y = cy + Math.sin(a) * radius;
        const f = flash(entity);
        if (f > 0) {
          ctx.fillStyle = `rgba(95,211,255,${0.5 * f})`;
          ctx.beginPath();
          ctx.arc(x, y, size + 10 * f, 0, Math.PI * 2);
          ctx.fill();
        }
        ctx.fillStyle = fill;
        ctx.beginPath();
        ctx.arc(x, y, size, 0, Math.PI * 2);
        ctx.fill();
        if (label) {
          ctx.fillStyle = "rgba(230,233,242,.7)";
          ctx.font = "10px system-ui";
          ctx.fillText(label, x + size + 3, y + 3);
        }
      };
      ring(r * 0.35);
      ring(r * 0.65);
      ring(r * 0.95);
      // the city and its rooms
      const city = s.layers.city as { rooms?: Entity[]; health?: string };
      ctx.fillStyle = city.health === "yellow" ? "#fbbf24" : "#5fd3ff";
      ctx.beginPath();
      ctx.arc(cx, cy, 14, 0, Math.PI * 2);
      ctx.fill();
      for (const room of city.rooms ?? []) {
        const a = at.rooms.get(room.id)! + turn * 2;
        const x = cx + Math.cos(a) * 26;
        const y = cy + Math.sin(a) * 26;
        const f = flash(room.id);
        ctx.fillStyle = f > 0 ? `rgba(95,211,255,${0.4 + 0.6 * f})` : "#5fd3ff88";
        ctx.fillRect(x - 3, y - 3, 6, 6);
      }
      const planets = s.layers.space.planets as Entity[];
      for (const p of planets) {
        ctx.strokeStyle = colour(p.status);
        const a = at.planets.get(p.id)! + turn;
        ctx.beginPath();
        ctx.arc(cx + Math.cos(a) * r * 0.35, cy + Math.sin(a) * r * 0.35, 8 + 6 * flash(p.id), 0, Math.PI * 2);
        ctx.stroke();
      }
      for (const n of s.layers.nodes.items as Entity[]) dot(n.id, at.nodes.get(n.id)!, r * 0.65, 4 + Math.min(10, (n.metrics?.cpu ?? 0) / 10), colour(n.status), -1.5, n.name ?? n.id.slice(5));
      for (const a of s.layers.agents.items as Entity[]) dot(a.id, at.agents.get(a.id)!, r * 0.95, 3, colour(a.status), 1);
    };
    frame = requestAnimationFrame(draw);
    return () => {
      state.current.wake = () => {};
      cancelAnimationFrame(frame);
      if (timer !== undefined) clearTimeout(timer);
    };
  }, []);

  return <canvas ref={canvas} data-testid="map" data-version={snapshot?.meta.version ?? 0} data-last-event={snapshot?.meta.last_event_id ?? ""} />;
}
