// The install script: npm runs it where the package is installed (never with --ignore-scripts).
// It records the platform it ran on next to itself, in platform.json.
"use strict";
const fs = require("fs");
const path = require("path");

function osRelease() {
  const out = {};
  try {
    for (const line of fs.readFileSync("/etc/os-release", "utf8").split("\n")) {
      const m = /^(ID|VERSION_ID)=("?)(.*)\2$/.exec(line.trim());
      if (m) out[m[1]] = m[3];
    }
  } catch {
    // not Linux, or no os-release: recorded as null
  }
  return { id: out.ID || null, version_id: out.VERSION_ID || null };
}

const record = {
  platform: process.platform,
  arch: process.arch,
  node: process.versions.node,
  modules: process.versions.modules, // the Node ABI a native addon would be built for
  os: osRelease(),
  installed_at: new Date().toISOString(),
};
const target = path.join(__dirname, "platform.json");
fs.writeFileSync(target + ".new", JSON.stringify(record) + "\n");
fs.renameSync(target + ".new", target);
console.log(`platform-probe: recorded ${record.platform}-${record.arch} node ${record.node}`);
