// A plugin in plain Node.js (no SDK), written against SPEC 3 as another language would be.
//
// It reads every field of what the host sends WITHOUT guessing defaults:
// `params.connections`, `params.target.peerType`, `params.target.threadId === null`...
// A field that is missing (undefined, where SPEC 3.1 says it is always on the wire)
// is answered with -32602 and a "MISSING FIELD" line on stderr, so a test sees it.
// It keeps its per-connection state with state.get / state.put (sending the epoch
// it was handed), serves connection.resume / connection.release, and sends every
// field of its own messages, optional ones as null.
"use strict";

const readline = require("readline");

const served = new Map(); // connectionId -> {info, epoch}
const sessions = new Map();
const pending = new Map(); // id of a request to the host -> {resolve, reject}
let nextId = 1;

class MissingField extends Error {}

function write(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function need(obj, path) {
  // the value at `path` (a.b.c); it must be present: null is a value, undefined is not
  let value = obj;
  for (const part of path.split(".")) {
    if (value === null || typeof value !== "object" || !(part in value)) {
      throw new MissingField(path);
    }
    value = value[part];
  }
  return value;
}

function needAll(obj, prefix, fields) {
  const out = {};
  for (const f of fields) out[f] = need(obj, prefix ? `${prefix}.${f}` : f);
  return out;
}

function needString(obj, path) {
  const value = need(obj, path);
  if (typeof value !== "string") throw new RpcError(-32602, `${path} must be a string`);
  return value;
}

function connectionInfo(obj, prefix) {
  return needAll(obj, prefix, [
    "connectionId", "channelId", "kind", "accountId", "displayName", "options", "credentials",
  ]);
}

function askHost(method, params) {
  const id = `node-${nextId++}`;
  write({ jsonrpc: "2.0", id, method, params });
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

function notifyHost(method, params) {
  write({ jsonrpc: "2.0", method, params });
}

class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// ------------------------------------------------------------------ host-kept state

async function stateGet(connectionId, key) {
  const result = await askHost("state.get", { key, connectionId });
  need(result, "value");
  return { value: result.value, epoch: need(result, "epoch") };
}

async function statePut(connectionId, key, value) {
  const epoch = connectionId === null ? null : served.get(connectionId)?.epoch ?? null;
  const result = await askHost("state.put", { key, value, connectionId, epoch });
  return need(result, "epoch");
}

async function serve(info) {
  // the epoch of this hand-over goes with every later put (SPEC 3.4, 10)
  const { value, epoch } = await stateGet(info.connectionId, "resumes");
  served.set(info.connectionId, { info, epoch });
  await statePut(info.connectionId, "resumes", (value || 0) + 1);
}

// ------------------------------------------------------------------ host -> plugin methods

function sessionView(sessionId, kind, status) {
  return {
    sessionId, kind, status, instructions: [], metadata: {},
    qrCode: null, qrImage: null, accountId: `node_${sessionId}`, displayName: "Node", error: null,
  };
}

const handlers = {
  async initialize(params) {
    needAll(params, "", ["protocolVersion", "config", "stateDir", "connections"]);
    needAll(params, "host", ["name", "version"]);
    needAll(params, "plugin", ["id", "version"]);
    if (!Array.isArray(params.connections)) throw new MissingField("connections (an array)");
    params.connections.forEach((c, i) => connectionInfo(params, `connections.${i}`));
    handlers._resume = params.connections;
    return {
      protocolVersion: 1,
      plugin: { name: "node_complete", version: "1.0.0" },
      connectors: [{
        kind: "nodecomplete", displayName: "Node complete", authType: "credentials",
        capabilities: ["receive_text", "send_text"],
        optionsSchema: { type: "object", properties: { apiKey: { type: "string", writeOnly: true } } },
      }],
      capabilities: { webhook: false, sessions: true },
    };
  },
  async health() {
    const connections = {};
    for (const id of served.keys()) connections[id] = "connected";
    return { status: "ok", detail: null, connections };
  },
  async "session.start"(params) {
    const p = needAll(params, "", ["sessionId", "kind", "connectionId", "channelId", "displayName", "options"]);
    const view = sessionView(p.sessionId, p.kind, "connected");
    sessions.set(p.sessionId, view);
    notifyHost("session.update", { ...view, connectionId: p.connectionId, credentials: { apiKey: "node-secret-0123456789" } });
    return view;
  },
  async "session.get"(params) {
    const sessionId = needString(params, "sessionId");
    return sessions.get(sessionId) || sessionView(sessionId, "nodecomplete", "expired");
  },
  async "session.input"(params) {
    const sessionId = needString(params, "sessionId");
    need(params, "input"); // present, even when null
    return sessions.get(sessionId) || sessionView(sessionId, "nodecomplete", "expired");
  },
  async "session.cancel"(params) {
    needString(params, "sessionId");
    return {};
  },
  async "connection.resume"(params) {
    await serve(connectionInfo(params, ""));
    return {};
  },
  async "connection.release"(params) {
    served.delete(need(params, "connectionId"));
    return {};
  },
  async "connection.logout"(params) {
    const connectionId = need(params, "connectionId");
    served.delete(connectionId);
    notifyHost("connection.status", { connectionId, status: "revoked", error: null });
    return {};
  },
  async "message.send"(params) {
    const p = needAll(params, "", [
      "requestId", "connectionId", "channelId", "kind", "content", "contentType", "metadata",
    ]);
    const target = needAll(params, "target", ["peerId", "peerType", "threadId", "replyToMessageId"]);
    if (typeof target.peerType !== "string") throw new MissingField("target.peerType (a string)");
    if (target.threadId !== null && typeof target.threadId !== "string") throw new MissingField("target.threadId");
    if (!served.has(p.connectionId)) throw new RpcError(-32011, `unknown connection ${p.connectionId}`);
    // SPEC 3.6 dedupe, kept by the host
    const key = `sent:${p.requestId}`;
    const { value } = await stateGet(p.connectionId, key);
    if (value !== null) return { providerMessageId: value, duplicate: true };
    const providerMessageId = `node_${p.requestId.length}_${Date.now()}`;
    await statePut(p.connectionId, key, providerMessageId);
    if (p.metadata.echoBack) setImmediate(() => echoBack(p, target));
    return { providerMessageId, duplicate: false };
  },
  async shutdown() {
    return {};
  },
};

async function echoBack(p, target) {
  const info = served.get(p.connectionId).info;
  const ack = await askHost("event.inbound", {
    eventId: `node_evt_${p.requestId}`, timestamp: new Date().toISOString(), deliveryAttempt: 1,
    connectionId: p.connectionId, channelId: p.channelId, kind: p.kind, accountId: info.accountId,
    peerId: target.peerId, peerType: target.peerType, userId: null, threadId: target.threadId,
    messageId: `node_in_${p.requestId}`, messageType: "text", content: p.content, metadata: {},
  });
  needAll(ack, "", ["accepted", "duplicate", "pending", "retryAfterSeconds"]);
}

// ------------------------------------------------------------------ the loop

async function onRequest(message) {
  const { id, method } = message;
  const handler = handlers[method];
  if (handler === undefined || method.startsWith("_")) {
    write({ jsonrpc: "2.0", id, error: { code: -32601, message: `method not found: ${method}` } });
    return;
  }
  try {
    const params = need(message, "params");
    if (params === null || typeof params !== "object" || Array.isArray(params)) {
      throw new RpcError(-32602, "params must be an object");
    }
    const result = await handler(params);
    write({ jsonrpc: "2.0", id, result });
  } catch (err) {
    if (err instanceof MissingField) {
      process.stderr.write(`MISSING FIELD in ${method}: ${err.message}\n`);
      write({ jsonrpc: "2.0", id, error: { code: -32602, message: `missing field: ${err.message}` } });
    } else if (err instanceof RpcError) {
      write({ jsonrpc: "2.0", id, error: { code: err.code, message: err.message } });
    } else {
      process.stderr.write(`error in ${method}: ${err.stack}\n`);
      write({ jsonrpc: "2.0", id, error: { code: -32603, message: String(err.message || err) } });
    }
  }
}

function onMessage(message) {
  if (message.method === undefined) { // an answer to one of our requests
    const waiter = pending.get(message.id);
    if (waiter === undefined) return;
    pending.delete(message.id);
    if ("error" in message) waiter.reject(new RpcError(message.error.code, message.error.message));
    else waiter.resolve(message.result);
    return;
  }
  if (message.id === undefined) { // a notification
    if (message.method === "initialized") {
      notifyHost("log", { level: "info", message: "node_complete initialized", fields: null });
      for (const info of handlers._resume || []) {
        serve(info).catch((err) => process.stderr.write(`resume of ${info.connectionId} failed: ${err.message}\n`));
      }
    }
    return;
  }
  onRequest(message);
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let message;
  try {
    message = JSON.parse(line);
  } catch (err) {
    write({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "parse error" } });
    return;
  }
  if (message === null || typeof message !== "object" || Array.isArray(message)) {
    write({ jsonrpc: "2.0", id: null, error: { code: -32600, message: "invalid request" } });
    return;
  }
  onMessage(message);
});
lines.on("close", () => process.exit(0)); // SPEC 3.2: exit when stdin reaches EOF
