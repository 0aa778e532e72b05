/**
 * What the binary serves to browsers, next to the API: the live page at `/` (Bun's HTML bundling:
 * bundled on first request when run from source, at build time into the compiled executable), the
 * OpenAPI UI at `/swagger` from the pinned `swagger-ui-dist` files embedded the same way (no CDN;
 * it renders with the network cut off), and the local sign-in shortcut.
 */
import type { Server } from "bun";
import swaggerBundle from "swagger-ui-dist/swagger-ui-bundle.js" with { type: "file" };
import swaggerCss from "swagger-ui-dist/swagger-ui.css" with { type: "file" };
import { AppError } from "../engine/errors.ts";
import { errorResponse } from "../plugins/errors.ts";
import indexPage from "./index.html";

export interface WebRoutesOptions {
  /**
   * Signs a short-lived token for a user, or null when local sign-in is off. It is on only when
   * the server made its own secret (no JWT_SECRET: the embedded default), and it answers only
   * clients on the loopback interface.
   */
  localToken: ((userId: string) => Promise<{ token: string; expires_at: string }>) | null;
}

const SWAGGER_PAGE = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8" />
  <meta name="viewport" content="width=device-width, initial-scale=1" />
  <title>DAARION City API</title>
  <link rel="stylesheet" href="/swagger/assets/swagger-ui.css" />
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/swagger/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({ url: "/swagger/json", dom_id: "#swagger-ui", deepLinking: true });
  </script>
</body>
</html>`;

const FAVICON = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="#0b1020"/><circle cx="8" cy="8" r="3" fill="#5fd3ff"/></svg>`;

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+)$/;

/** `true` when the request comes from this machine. */
export function fromLoopback(req: Request, server: Server<unknown>): boolean {
  const ip = server.requestIP(req)?.address;
  return ip !== undefined && LOOPBACK.test(ip);
}

/**
 * The `routes` of `Bun.serve` for browsers. They are matched before the API (Elysia), so the
 * swagger plugin's own `/swagger` page (which loads its UI from a CDN) is never served; the plugin
 * still serves the document at `/swagger/json`.
 */
export function webRoutes(o: WebRoutesOptions) {
  const file = (path: string, type: string) => () => new Response(Bun.file(path), { headers: { "content-type": type, "cache-control": "public, max-age=86400" } });
  return {
    "/": indexPage,
    "/favicon.ico": () => new Response(FAVICON, { headers: { "content-type": "image/svg+xml", "cache-control": "public, max-age=86400" } }),
    "/swagger": () => new Response(SWAGGER_PAGE, { headers: { "content-type": "text/html; charset=utf-8" } }),
    "/swagger/assets/swagger-ui.css": file(swaggerCss, "text/css; charset=utf-8"),
    "/swagger/assets/swagger-ui-bundle.js": file(swaggerBundle, "text/javascript; charset=utf-8"),
    "/auth/local-token": {
      POST: async (req: Request, server: Server<unknown>) => {
        if (!o.localToken || !fromLoopback(req, server)) {
          return errorResponse(new AppError("forbidden", "local sign-in answers loopback clients of a server that made its own secret (JWT_SECRET unset); use a token from `daarion-city token <user_id>`"));
        }
        const length = Number(req.headers.get("content-length") ?? NaN);
        if (!(length <= 1024)) return errorResponse(new AppError("payload_too_large", "send {\"user_id\"} with a content-length of at most 1,024 bytes"));
        let userId: unknown;
        try {
          userId = ((await req.json()) as { user_id?: unknown }).user_id;
        } catch {
          return errorResponse(new AppError("invalid_json", "the body is not JSON"));
        }
        if (typeof userId !== "string") return errorResponse(new AppError("validation_failed", "user_id: a user id (u_…) is needed"));
        try {
          return Response.json(await o.localToken(userId));
        } catch (err) {
          return errorResponse(new AppError("validation_failed", (err as Error).message));
        }
      },
    },
  };
}
