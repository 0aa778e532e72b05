/**
 * AN EXAMPLE Agents Core, for trying Second Me and the Living Map's agents on one machine. The city
 * server never starts or imports it; point AGENTS_SERVICE_URL at it yourself:
 *
 *   bun examples/agents-core/server.ts                                  # listens on 127.0.0.1:7100
 *   AGENTS_SERVICE_URL=http://127.0.0.1:7100 bun run start
 *
 * It speaks the HTTP contract the city uses (README "Second Me", "Living Map"):
 *   POST /agents/{agent_id}/invoke  {input, context:{user_id, kind}} → {reply, tokens_used}
 *   GET  /agents                    → [{id, name, kind, status}]
 *   GET  /agents/metrics            → [{agent_id, calls_24h, tokens_24h}]
 * Its "agent" is no model: it answers with a fixed rule (it repeats the last line it was given and
 * counts the conversation), so what you see is plainly an example, never mistaken for a real agent.
 */
const port = Number(process.env.AGENTS_CORE_PORT ?? 7100);
const host = process.env.AGENTS_CORE_HOST ?? "127.0.0.1";

const agents = [
  { id: "ag_secondme_global", name: "Second Me (example)", kind: "personal", status: "online" },
  { id: "sofia", name: "Sofia (example)", kind: "assistant", status: "online" },
];
const usage = new Map<string, { calls: number; tokens: number }>();

const json = (body: unknown, status = 200) => Response.json(body, { status });

const server = Bun.serve({
  hostname: host,
  port,
  routes: {
    "/agents": () => json(agents),
    "/agents/metrics": () => json(agents.map((a) => ({ agent_id: a.id, calls_24h: usage.get(a.id)?.calls ?? 0, tokens_24h: usage.get(a.id)?.tokens ?? 0 }))),
    "/agents/:id/invoke": {
      POST: async (req) => {
        const agent = agents.find((a) => a.id === req.params.id);
        if (!agent) return json({ error: { code: "agent_not_found", message: `no agent ${req.params.id}` } }, 404);
        let body: { input?: unknown; context?: { user_id?: unknown } };
        try {
          body = (await req.json()) as typeof body;
        } catch {
          return json({ error: { code: "invalid_json", message: "the body is not JSON" } }, 400);
        }
        if (typeof body.input !== "string" || !body.input.trim()) return json({ error: { code: "validation_failed", message: "input: a non-empty string" } }, 400);
        const lines = body.input.trim().split("\n");
        const last = lines.at(-1)!;
        const reply = `[${agent.name}] You said: "${last.slice(0, 200)}". I am an example agent with no model behind me (${lines.length} line(s) of conversation reached me for ${String(body.context?.user_id ?? "someone")}).`;
        const tokens = body.input.split(/\s+/).length + reply.split(/\s+/).length;
        const u = usage.get(agent.id) ?? { calls: 0, tokens: 0 };
        usage.set(agent.id, { calls: u.calls + 1, tokens: u.tokens + tokens });
        return json({ reply, tokens_used: tokens });
      },
    },
  },
  fetch: () => json({ error: { code: "route_not_found", message: "see examples/agents-core/server.ts for the routes" } }, 404),
});

console.log(`example agents core: listening on ${server.url.origin}`);
