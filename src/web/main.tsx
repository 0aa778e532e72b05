/**
 * The city's live page (served at `/`, bundled into the binary): the room list with online counts,
 * typing badges and the active room's glow (seed 003 §7.2), one room's live chat with history, and
 * the Living Map as a 2D canvas moving with the stream (seed 002's "Lite 2D UI"). Built only on the
 * typed client and its hooks (`src/client/`), like any frontend of this server.
 */
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import { CityApiError, CityClient, tokenExpiry, tokenSubject, type RoomListItem } from "../client/index.ts";
import { CityClientProvider, useGlobalPresence, useLivingMapFull, useRoom } from "../client/react.ts";
import { MapCanvas } from "./map-canvas.tsx";

const TOKEN_KEY = "daarion-city.token";

function storedToken(): string | null {
  const t = localStorage.getItem(TOKEN_KEY);
  const exp = tokenExpiry(t);
  return t && (exp === null || exp > Date.now() + 5000) ? t : null;
}

function Status({ label, status }: { label: string; status: string }) {
  return (
    <span className="status" data-testid={`status-${label}`} data-status={status}>
      <span className={`dot ${status}`} />
      {label}: {status}
    </span>
  );
}

function SignIn({ userId, onToken }: { userId: string | null; onToken: (t: string | null) => void }) {
  const [user, setUser] = useState("u_");
  const [pasted, setPasted] = useState("");
  const [error, setError] = useState<string | null>(null);
  if (userId) {
    return (
      <span className="signin">
        <span data-testid="signed-in">signed in as <b>{userId}</b></span>
        <button onClick={() => onToken(null)}>sign out</button>
      </span>
    );
  }
  const local = async () => {
    setError(null);
    const res = await fetch("/auth/local-token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: user }) });
    const json = (await res.json()) as { token?: string; error?: { message: string } };
    if (json.token) onToken(json.token);
    else setError(json.error?.message ?? `HTTP ${res.status}`);
  };
  return (
    <span className="signin">
      <input data-testid="user-id" value={user} onChange={(e) => setUser(e.target.value)} placeholder="u_alice" aria-label="user id" />
      <button data-testid="sign-in" onClick={local} title="works on this machine when the server made its own secret">sign in (local)</button>
      <input value={pasted} onChange={(e) => setPasted(e.target.value)} placeholder="or paste a token" aria-label="token" />
      <button onClick={() => tokenSubject(pasted.trim()) ? onToken(pasted.trim()) : setError("that is not a JWT with a subject")}>use token</button>
      {error && <span className="error" data-testid="sign-in-error">{error}</span>}
    </span>
  );
}

type RoomListProps = { rooms: RoomListItem[]; active: string | null; onPick: (id: string) => void };

/** The room list with live numbers (the presence socket needs a token). */
function LiveRoomList(props: RoomListProps) {
  const presence = useGlobalPresence();
  return <RoomList {...props} presence={presence} />;
}

function RoomList({ rooms, active, onPick, presence }: RoomListProps & { presence: ReturnType<typeof useGlobalPresence> | null }) {
  return (
    <section>
      <h2>
        Rooms {presence ? <Status label="presence" status={presence.connectionStatus} /> : <span className="hint">(sign in for live counts)</span>}
      </h2>
      <div className="rooms" data-testid="rooms">
        {rooms.map((r) => {
          const p = presence?.presenceBySlug[r.slug];
          const online = p?.onlineCount ?? r.members_online;
          const typing = p?.typingCount ?? 0;
          return (
            <button
              key={r.id}
              data-testid={`room-${r.slug}`}
              data-online={online}
              data-typing={typing}
              className={`room-card${r.id === active ? " active" : ""}${typing > 0 ? " busy" : ""}`}
              onClick={() => onPick(r.id)}
            >
              <span className="name"># {r.name}</span>
              <span className="meta">
                <span data-testid={`online-${r.slug}`}>{online} online</span>
                {typing > 0 && (
                  <span className="badge" data-testid={`typing-${r.slug}`}>
                    <span className="typing-dots"><span /><span /><span /></span> {typing} typing
                  </span>
                )}
              </span>
            </button>
          );
        })}
      </div>
    </section>
  );
}

function RoomView({ roomId, signedIn }: { roomId: string; signedIn: boolean }) {
  const room = useRoom(roomId);
  const [draft, setDraft] = useState("");
  const [sendError, setSendError] = useState<string | null>(null);
  const list = useRef<HTMLDivElement>(null);
  const lastSeq = room.messages.at(-1)?.seq;
  useEffect(() => {
    const el = list.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [lastSeq]);
  const send = async () => {
    const body = draft.trim();
    if (!body) return;
    setSendError(null);
    try {
      await room.send(body);
      setDraft("");
    } catch (e) {
      setSendError(e instanceof CityApiError ? `${e.code}: ${e.message}` : String(e));
    }
  };
  return (
    <section>
      <h2>
        {room.room ? `# ${room.room.name}` : "…"} <span className="badge" data-testid="members-online">{room.membersOnline} online</span>{" "}
        <Status label="room" status={room.connectionStatus} />
      </h2>
      <div className="messages" ref={list} data-testid="messages">
        {room.hasOlder && <button onClick={room.loadOlder} data-testid="load-older">load older</button>}
        {room.messages.map((m) => (
          <div className="msg" key={m.seq} data-testid="message" data-seq={m.seq}>
            <span className="who">{m.author_user_id ?? m.author_agent_id ?? "city"}</span>
            <span className="when">{new Date(m.created_at).toLocaleTimeString()}</span>
            <div className="body">{m.body}</div>
          </div>
        ))}
      </div>
      <div className="typing-line" data-testid="typing-line">{room.typingUsers.length ? `${room.typingUsers.join(", ")} typing…` : ""}</div>
      {signedIn ? (
        <div className="composer">
          <input
            data-testid="composer"
            value={draft}
            placeholder="Write to the room"
            onChange={(e) => {
              setDraft(e.target.value);
              room.typing();
            }}
            onKeyDown={(e) => e.key === "Enter" && void send()}
          />
          <button data-testid="send" onClick={send} disabled={!draft.trim()}>send</button>
        </div>
      ) : (
        <div className="hint">Reading only: sign in to write.</div>
      )}
      {(sendError ?? room.error) && <div className="error">{sendError ?? room.error}</div>}
    </section>
  );
}

function LivingMap() {
  const map = useLivingMapFull({ maxEvents: 50 });
  const last = map.events.at(-1);
  return (
    <section>
      <h2>
        Living Map <Status label="map" status={map.connectionStatus} />{" "}
        <span className="badge" data-testid="map-events" data-count={map.events.length}>{map.events.length} events</span>
      </h2>
      <div className="map-wrap">
        <MapCanvas snapshot={map.snapshot} lastEvent={last ?? null} />
      </div>
      <div className="legend"><span>● node (size: CPU)</span><span>• agent</span><span>◯ DAO</span><span>▢ room</span></div>
      {map.error && <div className="error">{map.error}</div>}
      <div className="events" data-testid="event-log">
        {map.events.slice(-20).reverse().map((e) => (
          <div key={e.id}>{e.timestamp.slice(11, 19)} {e.event_type}</div>
        ))}
      </div>
    </section>
  );
}

function App() {
  const [token, setToken] = useState<string | null>(storedToken);
  const [rooms, setRooms] = useState<RoomListItem[]>([]);
  const [active, setActive] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const client = useMemo(() => new CityClient({ baseUrl: location.origin, token }), [token]);
  const onToken = useCallback((t: string | null) => {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
    setToken(t);
  }, []);
  useEffect(() => {
    client.rooms({ limit: 200 }).then(
      (r) => {
        setRooms(r);
        setActive((a) => a ?? r.find((x) => x.is_default)?.id ?? r[0]?.id ?? null);
      },
      (e) => setError(String(e)),
    );
  }, [client]);
  const userId = tokenSubject(token);
  return (
    <CityClientProvider client={client}>
      <header>
        <h1>DAARION City</h1>
        <span className="spacer" />
        <SignIn userId={userId} onToken={onToken} />
      </header>
      {error && <div className="error">{error}</div>}
      <main>
        {userId ? <LiveRoomList key={`list-${token}`} rooms={rooms} active={active} onPick={setActive} /> : <RoomList rooms={rooms} active={active} onPick={setActive} presence={null} />}
        {active ? <RoomView key={`${active}-${token}`} roomId={active} signedIn={!!userId} /> : <section />}
        {userId ? <LivingMap key={`map-${token}`} /> : <section><h2>Living Map</h2><div className="hint">Sign in to see the live map.</div></section>}
      </main>
    </CityClientProvider>
  );
}

createRoot(document.getElementById("root")!).render(<App />);
