#!/usr/bin/env node
// Plain Node.js plugin (no SDK) speaking protocol v1 over stdio, for the sidecar tests.
// session.start connects at once (session.update with credentials); connection.resume makes it
// emit one event.inbound; message.send answers a provider id. Every line it reads and every
// answer it gets to its own requests are appended to relay.jsonl in its data folder (its working
// directory, the one place it may write) as {dir, message}.
"use strict";
const fs = require("fs");
const readline = require("readline");

const logPath = "relay.jsonl";
let nextId = 1;
const record = (dir, message) => { if (logPath) fs.appendFileSync(logPath, JSON.stringify({ dir, message }) + "\n"); };
const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const answer = (id, result) => send({ jsonrpc: "2.0", id, result });

function inbound(info) {
  send({
    jsonrpc: "2.0", id: `n${nextId++}`, method: "event.inbound", params: {
      eventId: `evt_node_${info.connectionId}`, timestamp: "2026-06-02T09:30:00Z", deliveryAttempt: 1,
      connectionId: info.connectionId, channelId: info.channelId, kind: info.kind, accountId: info.accountId,
      peerId: "node_peer", peerType: "dm", userId: null, threadId: null, messageId: `node_msg_${info.connectionId}`,
      messageType: "text", content: "hello from node", metadata: { via: "node" },
    },
  });
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const message = JSON.parse(line);
  record("in", message);
  if (message.method === undefined) return; // an answer to our event.inbound: recorded above
  const { id, method, params } = message;
  switch (method) {
    case "initialize":
      for (const info of params.connections || []) inbound(info); // a host before SPEC 3.1 may omit it
      return answer(id, { protocolVersion: 1, plugin: { name: "node-relay", version: "1.0.0" },
        connectors: [], capabilities: {} });
    case "initialized": return;
    case "health": return answer(id, { status: "ok", detail: null, connections: null });
    case "session.start": {
      const view = { sessionId: params.sessionId, kind: params.kind, status: "connected", qrCode: null, qrImage: null,
        instructions: [], accountId: `node_${params.connectionId}`, displayName: params.displayName || "Node",
        error: null, metadata: {} };
      send({ jsonrpc: "2.0", method: "session.update",
        params: { ...view, connectionId: params.connectionId, credentials: { token: "node-secret-credential-123" } } });
      return answer(id, view);
    }
    case "connection.resume": answer(id, {}); return inbound(params);
    case "message.send": return answer(id, { providerMessageId: `node_${params.requestId}`, duplicate: false });
    case "shutdown": answer(id, {}); return process.exit(0);
    default:
      if (id !== undefined) send({ jsonrpc: "2.0", id, error: { code: -32601, message: `no ${method}` } });
  }
});
process.stdin.on("end", () => process.exit(0));
