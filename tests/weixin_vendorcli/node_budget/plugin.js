// A plain Node.js plugin (no SDK) whose manifest declares `limits.outbound` (SPEC 4):
// protocol v1 over stdio, one JSON-RPC message per line.
"use strict";
const readline = require("readline");

function send(message) {
  process.stdout.write(JSON.stringify({ jsonrpc: "2.0", ...message }) + "\n");
}

function answer(id, method, params) {
  switch (method) {
    case "initialize":
      return {
        protocolVersion: 1,
        plugin: { name: "node_budget", version: "1.0.0" },
        connectors: [
          { kind: "node_budget", displayName: "Node budget", authType: "credentials",
            capabilities: ["send_text"], optionsSchema: null },
        ],
        capabilities: { webhook: false, sessions: false },
      };
    case "health":
      return { status: "ok", detail: null, connections: null };
    case "shutdown":
      return {};
    default:
      return undefined;
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let message;
  try {
    message = JSON.parse(line);
  } catch (err) {
    send({ id: null, error: { code: -32700, message: "parse error", data: null } });
    return;
  }
  if (message === null || typeof message !== "object" || Array.isArray(message) || message.jsonrpc !== "2.0" ||
      typeof message.method !== "string") {
    if (message && typeof message === "object" && ("result" in message || "error" in message)) return;
    send({ id: message && message.id !== undefined ? message.id : null,
           error: { code: -32600, message: "invalid request", data: null } });
    return;
  }
  if (message.id === undefined) return; // a notification: initialized, $/cancelRequest
  if (message.params !== undefined && (message.params === null || typeof message.params !== "object")) {
    send({ id: message.id, error: { code: -32602, message: "params must be an object", data: null } });
    return;
  }
  const result = answer(message.id, message.method, message.params);
  if (result === undefined) {
    send({ id: message.id, error: { code: -32601, message: `method not found: ${message.method}`, data: null } });
  } else {
    send({ id: message.id, result });
  }
});
lines.on("close", () => process.exit(0));
