// The sample app's admin endpoints: feature toggles and a killswitch, flipped during incidents
// (`inv app.toggle NAME on|off`, `inv app.killswitch on|off` call them over each host's SSH
// connection on 127.0.0.1:PORT; nginx answers 404 under ADMIN_PATH, so they are never public).
// ADMIN_PATH (app_admin_path) is /ops by default:
//   GET  /ops/state              {"killswitch": bool, "toggles": {NAME: bool}, "updated_at", "by"}
//   POST /ops/killswitch         body {"on": bool, "by": "who"}: {"changed": bool, ...state}
//   POST /ops/toggles/NAME       body {"on": bool, "by": "who"}: {"changed": bool, ...state}
// Every admin request needs `Authorization: Bearer <ADMIN_TOKEN>` (the app's environment; without
// ADMIN_TOKEN the endpoints answer 404). The state is a JSON file (ADMIN_STATE_FILE, default
// admin-state.json in the app's shared directory, beside releases/), written atomically and
// read again whenever it changed, so every PM2 cluster worker, the next release and a restart
// agree.
// While the killswitch is on, every route but /health answers 503 {"error": "killswitch", ...};
// /health keeps telling the truth about the process.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");

const PREFIX = (process.env.ADMIN_PATH || "/ops").replace(/\/+$/, "");
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const FILE =
  process.env.ADMIN_STATE_FILE || path.join(__dirname, "..", "..", "shared", "admin-state.json");

let cache = { mtime: -1, state: { killswitch: false, toggles: {} } };

function state() {
  let st;
  try {
    st = fs.statSync(FILE);
  } catch {
    return { killswitch: false, toggles: {} };
  }
  if (st.mtimeMs !== cache.mtime) {
    try {
      const parsed = JSON.parse(fs.readFileSync(FILE, "utf8"));
      cache = {
        mtime: st.mtimeMs,
        state: {
          killswitch: parsed.killswitch === true,
          toggles: parsed.toggles && typeof parsed.toggles === "object" ? parsed.toggles : {},
          updated_at: parsed.updated_at || null,
          by: parsed.by || null,
        },
      };
    } catch {
      // a file being replaced: keep the last state read
    }
  }
  return cache.state;
}

function save(next) {
  const tmp = `${FILE}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(next) + "\n", { mode: 0o600 });
  fs.renameSync(tmp, FILE);
}

function authorized(req) {
  const token = process.env.ADMIN_TOKEN || "";
  const given = String(req.headers.authorization || "").replace(/^Bearer /, "");
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return token !== "" && a.length === b.length && crypto.timingSafeEqual(a, b);
}

function readBody(req, done) {
  let text = "";
  req.on("data", (chunk) => {
    text += chunk;
    if (text.length > 4096) req.destroy();
  });
  req.on("end", () => {
    try {
      done(null, JSON.parse(text || "{}"));
    } catch {
      done(new Error("the body is not JSON"));
    }
  });
}

function admin(req, res, url, send) {
  if (!process.env.ADMIN_TOKEN) return send(res, 404, { error: "not found", path: url });
  if (!authorized(req)) return send(res, 401, { error: "a valid Bearer token is required" });
  if (url === `${PREFIX}/state` && req.method === "GET") return send(res, 200, state());
  const rest = url.slice(PREFIX.length);
  const m = rest.match(/^\/(killswitch|toggles\/([^/]+))$/);
  if (!m || req.method !== "POST") return send(res, 404, { error: "not found", path: url });
  const name = m[2] ? decodeURIComponent(m[2]) : null;
  if (name !== null && !NAME_RE.test(name)) {
    return send(res, 400, { error: `toggle name ${JSON.stringify(name)} is not a valid name` });
  }
  return readBody(req, (err, body) => {
    if (err || typeof body.on !== "boolean") {
      return send(res, 400, { error: 'expected a JSON body {"on": true|false}' });
    }
    const now = state();
    const before = name === null ? now.killswitch : now.toggles[name] === true;
    if (before === body.on) return send(res, 200, Object.assign({ changed: false }, now));
    const next = {
      killswitch: now.killswitch,
      toggles: Object.assign({}, now.toggles),
      updated_at: new Date().toISOString(),
      by: typeof body.by === "string" ? body.by.slice(0, 200) : null,
    };
    if (name === null) next.killswitch = body.on;
    else next.toggles[name] = body.on;
    try {
      save(next);
    } catch (e) {
      return send(res, 500, { error: `cannot save the admin state: ${e.code || e.message}` });
    }
    return send(res, 200, Object.assign({ changed: true }, state()));
  });
}

// The hook server.js calls first for every request: true when this module answered it.
function handle(req, res, url, send) {
  if (url === PREFIX || url.startsWith(`${PREFIX}/`)) {
    admin(req, res, url, send);
    return true;
  }
  if (url !== "/health" && state().killswitch) {
    res.setHeader("Retry-After", "60");
    send(res, 503, {
      error: "killswitch",
      message: "This service is switched off by its operators during an incident; retry later.",
    });
    return true;
  }
  return false;
}

module.exports = { handle, state };
