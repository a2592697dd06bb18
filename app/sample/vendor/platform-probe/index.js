// What the install script recorded, or null when it did not run (npm ci --ignore-scripts).
"use strict";
const fs = require("fs");
const path = require("path");

exports.recorded = function recorded() {
  try {
    return JSON.parse(fs.readFileSync(path.join(__dirname, "platform.json"), "utf8"));
  } catch {
    return null;
  }
};
