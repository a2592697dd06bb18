// The migration runner: `npm run migrate` applies the plain SQL files of migrations/
// (NNN_name.sql) in order, each in its own transaction together with its row in
// schema_migrations; `npm run schema-version` prints the current version (0: none applied).
// A migration that fails is rolled back whole, the runner says which and exits 1.
// Migrations must be backward compatible with the release still serving (zero-downtime deploys:
// the new schema is live before the old release stops).
"use strict";

const fs = require("fs");
const path = require("path");
const db = require("./db");

const DIR = path.join(__dirname, "migrations");
const LOCK = 7314; // pg_advisory_lock key: one runner at a time

function migrations() {
  return fs
    .readdirSync(DIR)
    .filter((f) => /^\d+_[\w-]+\.sql$/.test(f))
    .map((f) => ({ version: String(Number(f.split("_")[0])), file: f }))
    .sort((a, b) => Number(a.version) - Number(b.version));
}

async function current(client) {
  const t = await client.query("SELECT to_regclass('schema_migrations') AS t");
  if (!t.rows[0].t) return "0";
  const r = await client.query("SELECT max(version::int) AS v FROM schema_migrations");
  return String(r.rows[0].v || 0);
}

async function migrate(client) {
  await client.query("SELECT pg_advisory_lock($1)", [LOCK]);
  await client.query(
    "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, name text NOT NULL, " +
      "applied_at timestamptz NOT NULL DEFAULT now())",
  );
  const done = new Set((await client.query("SELECT version FROM schema_migrations")).rows.map((r) => r.version));
  const before = await current(client);
  let applied = 0;
  for (const m of migrations()) {
    if (done.has(m.version)) continue;
    const sql = fs.readFileSync(path.join(DIR, m.file), "utf8");
    try {
      await client.query("BEGIN");
      await client.query(sql);
      await client.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [m.version, m.file]);
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      console.error(`migration ${m.file} failed and was rolled back: ${err.message}`);
      console.error(`schema version stays ${await current(client)}`);
      return 1;
    }
    applied += 1;
    console.log(`applied ${m.file}`);
  }
  const after = await current(client);
  console.log(applied ? `schema version ${before} -> ${after}` : `schema version ${after}: up to date`);
  return 0;
}

async function main() {
  const client = db.client({ query_timeout: 0, statement_timeout: 600000 });
  await client.connect();
  try {
    if (process.argv.includes("--version")) {
      console.log(await current(client));
      return 0;
    }
    return await migrate(client);
  } finally {
    await client.end();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`migrate: ${err.message}`);
    process.exit(1);
  },
);
