// The opskit sample app: a small HTTP server for the lab and the tests.
//   GET /        {"app", "version", "release", "pid", "uptime"}  (the version comes from VERSION)
//   GET /health  200 {"status":"healthy"}, or 503 {"status":"unhealthy"} when the release holds a
//                file named BROKEN (how the lab builds a release that fails its health check) or
//                when the database does not answer SELECT 1 within 2 s (db.js: DATABASE_URL or
//                PG* variables; none set: no database, not checked)
//   GET /upload-count  {"uploads": N}: how many entries uploads/ holds (inventories/lab.yml
//                shares it between releases: app_shared_paths), null when the release has none
//   POST /upload writes the request body (up to 64 KiB) as a new file in uploads/ and a row in
//                the table uploads (migrations/001); {"name", "uploads"}
//   GET /platform what the install script of the dependency platform-probe recorded where npm
//                installed it (OS, CPU, Node ABI, distribution), or {"recorded": false, ...}
//   GET /build   dist/build-info.json of `npm run build`, or {"built": false}
//   GET /schema  the schema version (migrations applied) the database has
//   GET /ws      answers a websocket upgrade with 101 and echoes, for the proxy's websocket test
// A release holding a file named SLOW (a number of seconds) starts listening only that long
// after it started: how the lab builds a release that is slow to start but healthy.
// A release holding a file named FLAKY (a share, e.g. 0.3) answers that share of its requests
// other than /health with 500: healthy to its health check, bad to its users (the post-deploy
// watch's test release).
// It listens on HOST:PORT (127.0.0.1:3000 by default) and stops gracefully on SIGINT/SIGTERM.
"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");
const ms = require("ms"); // an npm dependency: proves the release installed them
const probe = require("platform-probe"); // a local package with an install script
const db = require("./db");
const admin = require("./admin"); // toggles and killswitch (admin.js)

const HOST = process.env.HOST || "127.0.0.1";
const PORT = Number(process.env.PORT || 3000);
const here = __dirname; // the real release directory (node resolves the `current` symlink)

function readText(name, fallback) {
  try {
    return fs.readFileSync(path.join(here, name), "utf8").trim();
  } catch {
    return fallback;
  }
}

const VERSION = readText("VERSION", "unknown");
const BROKEN = fs.existsSync(path.join(here, "BROKEN"));
const SLOW = Number(readText("SLOW", "0")) || 0;
const FLAKY = Math.min(1, Math.max(0, Number(readText("FLAKY", "0")) || 0));
let flakyDebt = 0; // every request adds FLAKY; each whole one owed is answered with a 500
const started = Date.now();

function send(res, code, body) {
  const text = JSON.stringify(body) + "\n";
  res.writeHead(code, { "Content-Type": "application/json", "Cache-Control": "no-store" });
  res.end(text);
}

function uploadsDir() {
  return path.join(here, "uploads");
}

function upload(req, res) {
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size <= 65536) chunks.push(c);
  });
  req.on("end", async () => {
    if (size > 65536) return send(res, 413, { error: "upload larger than 64 KiB" });
    const name = `${Date.now()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}.txt`;
    try {
      fs.writeFileSync(path.join(uploadsDir(), name), Buffer.concat(chunks), { flag: "wx" });
    } catch (err) {
      return send(res, 500, { error: `cannot write the upload: ${err.code || err.message}` });
    }
    let rows = null;
    if (db.configured) {
      try {
        await db.query("INSERT INTO uploads (name, size) VALUES ($1, $2)", [name, size]);
        rows = Number((await db.query("SELECT count(*) AS n FROM uploads")).rows[0].n);
      } catch (err) {
        return send(res, 503, { error: `database: ${err.message}`, name });
      }
    }
    return send(res, 201, { name, size, uploads: fs.readdirSync(uploadsDir()).length, rows });
  });
}

async function health(res) {
  if (BROKEN) return send(res, 503, { status: "unhealthy", reason: readText("BROKEN", "") });
  if (!db.configured) return send(res, 200, { status: "healthy", database: "not configured" });
  const r = await db.ping();
  if (!r.ok) return send(res, 503, { status: "unhealthy", database: r.error });
  return send(res, 200, { status: "healthy", database: { ok: true, ms: r.ms } });
}

async function schema(res) {
  try {
    const r = await db.query(
      "SELECT coalesce(max(version::int), 0) AS v FROM schema_migrations",
    );
    return send(res, 200, { schema_version: String(r.rows[0].v) });
  } catch (err) {
    return send(res, 503, { error: `database: ${err.message}` });
  }
}

// The request handler: one plain function.
function handle(req, res) {
  const url = req.url.split("?")[0];
  if (admin.handle(req, res, url, send)) return;
  if (url === "/health") return health(res);
  flakyDebt += FLAKY;
  if (flakyDebt >= 1) {
    flakyDebt -= 1;
    return send(res, 500, { error: "flaky on purpose (make-demo-repo)" });
  }
  if (url === "/upload" && req.method === "POST") return upload(req, res);
  if (url === "/upload-count") {
    let count = null;
    try {
      count = fs.readdirSync(uploadsDir()).length;
    } catch {
      // no uploads/ in this release
    }
    return send(res, 200, { uploads: count });
  }
  if (url === "/platform") {
    const rec = probe.recorded();
    if (!rec) {
      return send(res, 200, {
        recorded: false,
        reason: "platform-probe's install script did not run (installed with --ignore-scripts?)",
        running_on: { platform: process.platform, arch: process.arch, modules: process.versions.modules },
      });
    }
    return send(res, 200, Object.assign({ recorded: true }, rec));
  }
  if (url === "/build") {
    const info = readText(path.join("dist", "build-info.json"), "");
    if (!info) return send(res, 200, { built: false });
    try {
      return send(res, 200, Object.assign({ built: true }, JSON.parse(info)));
    } catch {
      return send(res, 200, { built: false, reason: "dist/build-info.json is not JSON" });
    }
  }
  if (url === "/schema") return schema(res);
  if (url === "/" || url === "/version") {
    return send(res, 200, {
      app: "opskit-sample-app",
      version: VERSION,
      release: path.basename(here),
      sentry_release: process.env.SENTRY_RELEASE || null,
      environment: process.env.SENTRY_ENVIRONMENT || null,
      greeting: process.env.GREETING || null,
      pid: process.pid,
      uptime: ms(Date.now() - started),
    });
  }
  return send(res, 404, { error: "not found", path: url });
}

const server = http.createServer(handle);

// A minimal websocket-style upgrade: enough to prove the proxy passes Upgrade/Connection.
server.on("upgrade", (req, socket) => {
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
  );
  socket.on("data", (data) => socket.write(data));
  socket.on("error", () => socket.destroy());
});

server.keepAliveTimeout = 5000;
setTimeout(() => {
  server.listen(PORT, HOST, () => {
    console.log(`opskit sample app ${VERSION} listening on ${HOST}:${PORT} (pid ${process.pid})`);
  });
}, SLOW * 1000);

function stop(signal) {
  console.log(`${signal}: closing the server`);
  server.close(() => db.end().then(() => process.exit(0)));
  server.closeIdleConnections(); // idle keep-alive connections (nginx's) would hold close() up
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on("SIGINT", () => stop("SIGINT"));
process.on("SIGTERM", () => stop("SIGTERM"));
