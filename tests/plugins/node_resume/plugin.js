// A plugin in plain Node.js, no SDK: newline-delimited JSON-RPC on stdio.
// It keeps every connection the host hands it (initialize.connections, connection.resume),
// answers `connections` with what it holds, and records each message it receives in
// $HOME/received.jsonl so that the test can check the host's traffic against schemas/.
// With config {"resume": false} it answers -32601 to connection.resume, like an older plugin.
"use strict";
const fs = require("fs");
const path = require("path");
const readline = require("readline");

const record = fs.openSync(path.join(process.env.HOME, "received.jsonl"), "a");
const held = new Map();
let fromInitialize = 0;
let fromResume = 0;
let resumeSupported = true;

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}
function result(id, value) {
  send({ jsonrpc: "2.0", id, result: value });
}
function error(id, code, message) {
  send({ jsonrpc: "2.0", id, error: { code, message, data: null } });
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  fs.writeSync(record, line + "\n");
  const msg = JSON.parse(line);
  const { id, method, params } = msg;
  switch (method) {
    case "initialize":
      resumeSupported = !(params.config && params.config.resume === false);
      for (const info of params.connections) held.set(info.connectionId, info);
      fromInitialize = params.connections.length;
      result(id, {
        protocolVersion: 1,
        plugin: { name: "node_resume", version: "1.0.0" },
        connectors: [],
        capabilities: { webhook: false, sessions: false },
      });
      break;
    case "initialized":
      break;
    case "health":
      result(id, { status: "ok", detail: null, connections: null });
      break;
    case "connection.resume":
      if (!resumeSupported) {
        error(id, -32601, "method not found: connection.resume");
        break;
      }
      held.set(params.connectionId, params);
      fromResume += 1;
      result(id, {});
      break;
    case "connections":
      result(id, {
        ids: [...held.keys()].sort(),
        fromInitialize,
        fromResume,
        credentialsIntact: [...held.values()].every((info) => info.credentials.token === "tok-" + info.connectionId),
      });
      break;
    case "shutdown":
      result(id, {});
      break;
    default:
      if (id !== undefined) error(id, -32601, "method not found: " + method);
  }
});
lines.on("close", () => process.exit(0));
