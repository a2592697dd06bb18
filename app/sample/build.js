// `npm run build`: writes dist/build-info.json (what was built, when, on which Node). The server
// works without it (GET /build says built: false).
"use strict";

const fs = require("fs");
const path = require("path");

const here = __dirname;
const version = fs.readFileSync(path.join(here, "VERSION"), "utf8").trim();
const info = { version, built_at: new Date().toISOString(), node: process.versions.node };
fs.mkdirSync(path.join(here, "dist"), { recursive: true });
fs.writeFileSync(path.join(here, "dist", "build-info.json"), JSON.stringify(info) + "\n");
console.log(`built dist/build-info.json for ${version}`);
