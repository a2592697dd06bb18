// The database: PostgreSQL through `pg`, configured only from the environment (DATABASE_URL, or
// libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE; opskit sets them with app_env).
"use strict";

const { Pool, Client } = require("pg");

const configured = Boolean(process.env.DATABASE_URL || process.env.PGHOST);

function options(extra) {
  const base = process.env.DATABASE_URL ? { connectionString: process.env.DATABASE_URL } : {};
  return Object.assign(base, { connectionTimeoutMillis: 2000, query_timeout: 2000 }, extra);
}

let pool = null;
function getPool() {
  if (!pool) {
    pool = new Pool(options({ max: 4, idleTimeoutMillis: 10000 }));
    pool.on("error", (err) => console.error(`database pool: ${err.message}`));
  }
  return pool;
}

// SELECT 1 with a short timeout: {ok, ms} or {ok: false, error}.
async function ping() {
  const t0 = Date.now();
  try {
    await getPool().query("SELECT 1");
    return { ok: true, ms: Date.now() - t0 };
  } catch (err) {
    return { ok: false, error: err.message };
  }
}

function query(text, params) {
  return getPool().query(text, params);
}

function client(extra) {
  return new Client(options(extra));
}

async function end() {
  if (pool) await pool.end().catch(() => {});
}

module.exports = { configured, ping, query, client, end };
