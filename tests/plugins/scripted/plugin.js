// A connector in plain Node.js, speaking protocol v1 over stdio without any SDK.
//
// Its "platform" behaves as the session option `mode` says:
// - "reply_window": a send to a peer is refused with -32016 (reply window closed) unless that
//   peer wrote since the last `repliesPerInbound` (default 1) accepted sends to it;
// - "rate_limit": the first `rateLimitedSends` (default 2) sends answer -32015 with
//   data.retryAfterSeconds = `retryAfterSeconds` (default 1);
// - "expire": after `sendsBeforeExpiry` (default 1) accepted sends of its first login the account's
//   session expires: sends answer -32017 and the plugin reports connection.status error
//   "session_expired" (unless `reportExpiry` is false: then only the -32017 answers tell); a webhook
//   body {"control": "expire"} expires it at once; a new session.start for the same connectionId
//   (a re-login) brings it back for good.
// Every line in and out is appended to <stateDir>/traffic.jsonl ({dir, line}), every accepted
// send to <stateDir>/sent.jsonl. Webhook bodies {peerId, text, messageId} become inbound events.
"use strict";

const fs = require("fs");
const path = require("path");
const readline = require("readline");

let stateDir = process.cwd();
const connections = new Map(); // connectionId -> {info, mode, options, sends, refusals, expired, windows}
const done = new Map(); // connectionId + requestId -> result
let nextId = 1;

function record(dir, line) {
  fs.appendFileSync(path.join(stateDir, "traffic.jsonl"), JSON.stringify({ dir, line }) + "\n");
}

function write(message) {
  const line = JSON.stringify(message);
  record("plugin_to_host", line);
  process.stdout.write(line + "\n");
}

function answer(id, result) { write({ jsonrpc: "2.0", id, result }); }
function fail(id, code, message, data) {
  write({ jsonrpc: "2.0", id, error: data === undefined ? { code, message } : { code, message, data } });
}
function notify(method, params) { write({ jsonrpc: "2.0", method, params }); }

function view(params, status) {
  return {
    sessionId: params.sessionId, kind: params.kind, status, qrCode: null, qrImage: null,
    instructions: [], accountId: "acct_" + params.connectionId, displayName: params.displayName || "Scripted",
    error: null, metadata: {},
  };
}

function connection(connectionId) {
  let c = connections.get(connectionId);
  if (!c) {
    c = { mode: "plain", options: {}, accepted: 0, calls: 0, logins: 0, expired: false, windows: new Map() };
    connections.set(connectionId, c);
  }
  return c;
}

// a connection handed over by the host (initialize, connection.resume): its options say the mode
function adopt(info) {
  const c = connection(info.connectionId);
  c.info = info;
  if (c.logins === 0) {
    c.options = info.options || {};
    c.mode = typeof c.options.mode === "string" ? c.options.mode : "plain";
    c.logins = 1;
  }
}

function option(c, name, fallback) {
  const value = c.options[name];
  return typeof value === "number" ? value : fallback;
}

function expire(connectionId, c) {
  if (!c.expired) {
    c.expired = true;
    if (c.options.reportExpiry !== false) {
      notify("connection.status", { connectionId, status: "error", error: "session_expired" });
    }
  }
}

function send(id, p) {
  const key = p.connectionId + "\u0000" + p.requestId;
  if (done.has(key)) return answer(id, { ...done.get(key), duplicate: true });
  const c = connections.get(p.connectionId);
  if (!c) return fail(id, -32011, "unknown connection " + p.connectionId);
  c.calls += 1;
  const peer = p.target.peerId;
  if (c.mode === "expire" && c.expired) return fail(id, -32017, "the account's session expired: log in again");
  if (c.mode === "rate_limit" && c.calls <= option(c, "rateLimitedSends", 2)) {
    return fail(id, -32015, "rate limited by the platform", { retryAfterSeconds: option(c, "retryAfterSeconds", 1) });
  }
  if (c.mode === "reply_window") {
    const left = c.windows.get(peer) || 0;
    if (left <= 0) return fail(id, -32016, "reply window closed: the peer must write first");
    c.windows.set(peer, left - 1);
  }
  c.accepted += 1;
  const result = { providerMessageId: "pm_" + c.accepted + "_" + p.connectionId, duplicate: false };
  done.set(key, result);
  fs.appendFileSync(
    path.join(stateDir, "sent.jsonl"),
    JSON.stringify({ requestId: p.requestId, peerId: peer, content: p.content, connectionId: p.connectionId }) + "\n",
  );
  answer(id, result);
  if (c.mode === "expire" && c.logins === 1 && c.accepted >= option(c, "sendsBeforeExpiry", 1)) {
    expire(p.connectionId, c);
  }
}

function webhook(id, p) {
  const c = connection(p.connectionId);
  let body = {};
  try { body = JSON.parse(Buffer.from(p.body || "", "base64").toString("utf8") || "{}"); } catch (e) { body = {}; }
  const events = [];
  if (body.control === "expire") {
    expire(p.connectionId, c);
  } else if (typeof body.peerId === "string") {
    c.windows.set(body.peerId, option(c, "repliesPerInbound", 1));
    const info = c.info || {};
    events.push({
      eventId: "ev_" + body.messageId, timestamp: new Date().toISOString(), deliveryAttempt: 1,
      connectionId: p.connectionId, channelId: info.channelId || "", kind: "scripted",
      accountId: info.accountId || "", peerId: body.peerId, peerType: "dm", userId: body.peerId,
      threadId: null, messageId: String(body.messageId), messageType: "text", content: String(body.text || ""),
      metadata: {},
    });
  }
  answer(id, { response: { status: 200, headers: { "content-type": "text/plain" }, body: "ok", bodyEncoding: null }, events });
}

function handle(message) {
  const { id, method, params } = message;
  const p = params || {};
  switch (method) {
    case "initialize":
      stateDir = p.stateDir || stateDir;
      for (const info of p.connections || []) adopt(info);
      return answer(id, {
        protocolVersion: 1,
        plugin: { name: "scripted", version: "1.0.0" },
        connectors: [{ kind: "scripted", displayName: "Scripted", authType: "credentials",
                       capabilities: ["receive_text", "send_text", "direct_messages"], optionsSchema: null }],
        capabilities: { webhook: true, sessions: true },
      });
    case "initialized":
      return undefined;
    case "health":
      return answer(id, { status: "ok", detail: null, connections: null });
    case "session.start": {
      const c = connection(p.connectionId);
      c.options = p.options || {};
      c.mode = typeof c.options.mode === "string" ? c.options.mode : "plain";
      c.expired = false; // a (re-)login brings the account back
      c.logins += 1;
      c.info = { connectionId: p.connectionId, channelId: p.channelId, kind: p.kind, accountId: "acct_" + p.connectionId };
      const connected = view(p, "connected");
      notify("session.update", { ...connected, connectionId: p.connectionId, credentials: { token: "tok_" + nextId++ } });
      return answer(id, connected);
    }
    case "session.get":
      return answer(id, view({ sessionId: p.sessionId, kind: "scripted", connectionId: "" }, "connected"));
    case "session.cancel":
      return answer(id, {});
    case "connection.resume":
      adopt(p);
      return answer(id, {});
    case "connection.release":
      return answer(id, {});
    case "connection.logout":
      connections.delete(p.connectionId);
      answer(id, {});
      return notify("connection.status", { connectionId: p.connectionId, status: "revoked", error: null });
    case "message.send":
      return send(id, p);
    case "webhook.handle":
      return webhook(id, p);
    case "shutdown":
      return answer(id, {});
    default:
      if (id !== undefined) fail(id, -32601, "method not found: " + method);
  }
  return undefined;
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  record("host_to_plugin", line);
  let message;
  try { message = JSON.parse(line); } catch (e) { return; }
  if (message.method === undefined) return; // answers to our own requests (none here)
  handle(message);
});
input.on("close", () => process.exit(0));
