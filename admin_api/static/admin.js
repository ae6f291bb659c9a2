/* channel-runtime admin page.
 *
 * No framework and no build step. Every list is reconciled by key: a card is built
 * once and then only the parts whose data changed are written, so what the admin
 * types, opened <details>, selections and keyboard focus survive every live update.
 * Live updates follow GET /api/events (SSE, read with fetch because it needs the
 * Authorization header); where the server has no such route the page polls.
 */
"use strict";
(() => {
  const TOKEN_KEY = "channel-runtime-admin-token";
  const SESSIONS_KEY = "channel-runtime-admin-sessions";
  const POLL_MS = 1500;            // polling when the server has no /api/events
  const SLOW_POLL_MS = 10000;      // counters and latency are not evented: refreshed this often anyway
  const LOG_POLL_MS = 1500;
  const LOG_KEEP = 3000;           // lines kept in the page per plugin view
  const MASK = "[REDACTED]";       // what the API shows in place of a stored secret
  // the server marks every secret field of the schemas it serves (writeOnly: true, by the host's one rule in
  // plugin_host/redact.py); a field without a schema falls back on the same words as that rule
  const SECRET_NAME = /token|secret|passw|key|credential|authorization|cookie/i;
  const TERMINAL = new Set(["connected", "expired", "error", "cancelled"]);

  const $ = (id) => document.getElementById(id);
  const S = {
    gen: 0,                 // bumped on sign-in/out: loops of an older generation stop
    lost: false,
    mode: "",
    plugins: new Map(),     // id -> list view
    details: new Map(),     // id -> GET /api/plugins/{id}
    connectors: [],
    connections: [],
    channels: [],
    results: new Map(),     // key -> {text, kind} shown next to a plugin or account
    busy: new Set(),        // keys of cards with an action running
    sessions: new Map(),    // sessionId -> {view, stream: AbortController}
    logs: { plugin: "", lines: [], after: 0 },
    lastSlow: 0,
  };

  // ------------------------------------------------------------------ DOM helpers

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const svg = (tag, attrs) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  };
  function setText(node, text) {
    text = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setAttr(node, name, value) {
    if (value === null || value === undefined || value === false) {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else {
      const v = value === true ? "" : String(value);
      if (node.getAttribute(name) !== v) node.setAttribute(name, v);
    }
  }
  function setClass(node, name) { if (node.className !== name) node.className = name; }
  function show(node, visible) { if (node.hidden === visible) node.hidden = !visible; }
  function setDisabled(node, disabled) { if (node.disabled !== disabled) node.disabled = disabled; }

  /** Bring `container`'s keyed children in line with `items`, touching only what changed. */
  function reconcile(container, items, keyOf, create, update) {
    const existing = new Map();
    for (const node of Array.from(container.children)) {
      if (node.dataset.key !== undefined) existing.set(node.dataset.key, node);
    }
    let previous = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = existing.get(key);
      if (node) existing.delete(key);
      else { node = create(item); node.dataset.key = key; }
      update(node, item);
      const wanted = previous ? previous.nextElementSibling : container.firstElementChild;
      if (node !== wanted) container.insertBefore(node, wanted);  // moves only when the order changed
      previous = node;
    }
    for (const node of existing.values()) node.remove();
  }

  const pad = (n) => String(n).padStart(2, "0");
  function toDate(t) {
    if (t === null || t === undefined || t === "") return null;
    const d = typeof t === "number" ? new Date(t < 1e12 ? t * 1000 : t) : new Date(t);
    return isNaN(d.getTime()) ? null : d;
  }
  function when(t) {
    const d = toDate(t);
    if (!d) return "—";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function timeEl(t) {
    const d = toDate(t);
    return h("time", { datetime: d ? d.toISOString() : undefined }, when(t));
  }
  function setTime(node, t) {
    const d = toDate(t);
    setAttr(node, "datetime", d ? d.toISOString() : null);
    setText(node, when(t));
  }
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many || one + "s"}`;

  // ------------------------------------------------------------------ token and API

  const channel = "BroadcastChannel" in window ? new BroadcastChannel("channel-runtime-admin") : null;
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  class NetworkError extends Error {}
  class ApiError extends Error {
    constructor(status, error) {
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || `http_${status}`;
      this.details = error.details || {};
    }
  }

  /** fetch an API route; throws NetworkError (server unreachable) or ApiError (an error answer). */
  async function api(method, path, { json, body, signal } = {}) {
    const headers = { Authorization: "Bearer " + token() };
    if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
    let res;
    try { res = await fetch(path, { method, headers, body, signal, cache: "no-store" }); }
    catch (e) {
      if (e.name === "AbortError") throw e;
      setLost(true);
      throw new NetworkError("the server cannot be reached");
    }
    setLost(false);
    if (res.status === 401) { signOut("The server refused the token: sign in again."); throw new ApiError(401, { code: "unauthorized", message: "unauthorized" }); }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      const error = data && data.error ? data.error : { code: `http_${res.status}`, message: res.statusText || `HTTP ${res.status}` };
      throw new ApiError(res.status, error);
    }
    return data;
  }
  const enc = encodeURIComponent;
  const errorText = (e) => (e instanceof ApiError ? e.message : e && e.message) || String(e);

  function setLost(lost) {
    if (S.lost === lost) return;
    S.lost = lost;
    show($("lost"), lost);
    renderLive();
    if (!lost) scheduleRefresh("all");
  }
  function renderLive() {
    const live = $("live");
    if (!token()) { setText(live, ""); setClass(live, "live"); return; }
    if (S.lost) { setText(live, "Reconnecting…"); setClass(live, "live lost"); return; }
    setText(live, S.mode ? "Live" : "Connecting…");
    setAttr(live, "title", S.mode === "polling" ? `Refreshed every ${POLL_MS / 1000} s` : S.mode === "events" ? "Following the server's events" : null);
    setClass(live, S.mode ? "live on" : "live");
  }

  // ------------------------------------------------------------------ sign-in

  function signedIn() {
    S.gen += 1;
    show($("sign-in"), false);
    show($("app"), true);
    show($("sign-out"), true);
    setText($("sign-in-error"), "");
    renderLive();
    selectTab();
    restoreSessions();
    liveLoop(S.gen);
    logLoop(S.gen);
  }

  function signOut(why, { broadcast = true } = {}) {
    const wasIn = !!token();
    sessionStorage.removeItem(TOKEN_KEY);
    S.gen += 1;
    S.mode = "";
    for (const s of S.sessions.values()) if (s.stream) s.stream.abort();
    show($("app"), false);
    show($("sign-out"), false);
    show($("sign-in"), true);
    show($("lost"), false);
    S.lost = false;
    setText($("sign-in-error"), why || "");
    renderLive();
    if (broadcast && wasIn && channel) channel.postMessage({ type: "sign-out" });
  }

  if (channel) {
    // other tabs of this page share the token for the browser session, and sign out together
    channel.addEventListener("message", (ev) => {
      const msg = ev.data || {};
      if (msg.type === "ask" && token()) channel.postMessage({ type: "token", token: token() });
      else if (msg.type === "token" && !token() && typeof msg.token === "string" && msg.token) {
        sessionStorage.setItem(TOKEN_KEY, msg.token);
        signedIn();
      } else if (msg.type === "sign-out" && token()) signOut("Signed out in another tab.", { broadcast: false });
    });
  }

  // ------------------------------------------------------------------ tabs

  const TABS = ["overview", "plugins", "accounts", "channels", "deliveries", "logs"];
  function currentTab() {
    const name = location.hash.replace(/^#/, "");
    return TABS.includes(name) ? name : "overview";
  }
  function selectTab() {
    const tab = currentTab();
    for (const name of TABS) show($("tab-" + name), name === tab);
    for (const a of document.querySelectorAll(".tabs a")) setAttr(a, "aria-current", a.dataset.tab === tab ? "page" : null);
    if (tab === "logs") logTick();
    scheduleRefresh("all");
  }
  window.addEventListener("hashchange", selectTab);
  document.addEventListener("visibilitychange", () => { if (!document.hidden && token()) scheduleRefresh("all"); });
  window.addEventListener("online", () => { if (token()) { wakeLive(); scheduleRefresh("all"); } });  // back: show it at once
  // the browser knows it is offline before any stream notices: say so, and end the stream (it reconnects when back)
  window.addEventListener("offline", () => { if (token()) { setLost(true); liveAbort.abort(); } });

  // ------------------------------------------------------------------ live updates

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // the live loop's wait before it reconnects; the browser coming back online ends it at once
  let wakeLive = () => {};
  let liveAbort = new AbortController();  // the live loop's current event stream
  const sleepUntilWoken = (ms) => new Promise((r) => {
    const timer = setTimeout(r, ms);
    wakeLive = () => { clearTimeout(timer); wakeLive = () => {}; r(); };
  });
  let lastEventId = "";

  async function liveLoop(gen) {
    let delay = 1000;
    scheduleRefresh("all");
    while (gen === S.gen) {
      let res;
      const abort = new AbortController();
      liveAbort = abort;
      try {
        const headers = { Authorization: "Bearer " + token(), Accept: "text/event-stream" };
        if (lastEventId) headers["Last-Event-ID"] = lastEventId;
        res = await fetch("api/events", { headers, signal: abort.signal, cache: "no-store" });
      } catch {
        setLost(true);
        await sleepUntilWoken(delay);
        delay = Math.min(delay * 2, 10000);
        continue;
      }
      if (res.status === 401) { signOut("The server refused the token: sign in again."); return; }
      if (!res.ok || !res.body) { setLost(false); await pollLoop(gen); return; }  // no event stream here: poll
      setLost(false);
      delay = 1000;
      S.mode = "events";
      renderLive();
      scheduleRefresh("all");  // catch up with what happened while away
      try {
        await readEvents(res.body, gen, (type, data, id) => {
          if (id) lastEventId = id;
          onHostEvent(type, data);
        });
      } catch { /* the stream broke */ }
      abort.abort();
      if (gen !== S.gen) return;
      setLost(true);
      await sleepUntilWoken(delay);
    }
  }

  async function pollLoop(gen) {
    S.mode = "polling";
    renderLive();
    let delay = POLL_MS;
    while (gen === S.gen) {
      if (!document.hidden) await refreshAll();  // a tab in the background asks for nothing
      delay = S.lost ? Math.min(delay * 2, 10000) : POLL_MS;
      await sleep(delay);
    }
  }

  /** Read a text/event-stream body, calling `onEvent(type, data, id)` per event. */
  async function readEvents(body, gen, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== S.gen) { reader.cancel().catch(() => {}); return; }
      setLost(false);  // anything on the stream (an event, a heartbeat) says the server is there
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let type = "message", id = "";
        const data = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") type = val;
          else if (field === "data") data.push(val);
          else if (field === "id") id = val;
        }
        if (!data.length && !id) continue;
        let parsed = null;
        try { parsed = data.length ? JSON.parse(data.join("\n")) : null; } catch { parsed = data.join("\n"); }
        onEvent(type, parsed, id);
      }
    }
  }

  function onHostEvent(type) {
    const t = String(type || "");
    if (t.startsWith("plugin")) scheduleRefresh("plugins", "connectors", "overview");
    else if (t.startsWith("connection") || t.startsWith("session")) scheduleRefresh("connections", "connectors", "overview");
    else if (t.startsWith("channel")) scheduleRefresh("channels", "overview");
    else if (t.startsWith("deliver")) scheduleRefresh("deliveries", "overview");
    else scheduleRefresh("all");
  }

  let pending = new Set();
  let refreshTimer = null;
  let refreshing = null;
  function scheduleRefresh(...what) {
    for (const w of what) pending.add(w);
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      if (refreshing) { await refreshing; }
      const now = pending;
      pending = new Set();
      refreshing = refresh(now).finally(() => { refreshing = null; });
    }, 60);
  }
  async function refreshAll() {
    if (refreshing) await refreshing;
    refreshing = refresh(new Set(["all"])).finally(() => { refreshing = null; });
    await refreshing;
  }

  async function refresh(what) {
    if (!token()) return;
    const all = what.has("all");
    const slow = Date.now() - S.lastSlow > SLOW_POLL_MS;
    if (S.mode === "events" && slow) S.lastSlow = Date.now();
    const jobs = [];
    if (all || what.has("plugins") || slow) jobs.push(loadPlugins());
    if (all || what.has("connectors")) jobs.push(loadConnectors());
    if (all || what.has("connections")) jobs.push(loadConnections());
    if (all || what.has("channels")) jobs.push(loadChannels());
    if (all || what.has("deliveries")) jobs.push(loadDeliveries());
    if (all || what.has("overview") || slow) jobs.push(loadOverview());
    await Promise.allSettled(jobs);
  }

  // ------------------------------------------------------------------ plugins

  async function loadPlugins() {
    const list = await api("GET", "api/plugins");
    const details = await Promise.allSettled(list.map((p) => api("GET", `api/plugins/${enc(p.id)}`)));
    S.plugins = new Map(list.map((p) => [p.id, p]));
    list.forEach((p, i) => { if (details[i].status === "fulfilled") S.details.set(p.id, details[i].value); });
    for (const id of Array.from(S.details.keys())) if (!S.plugins.has(id)) S.details.delete(id);
    renderPlugins();
  }

  function renderPlugins() {
    const list = Array.from(S.plugins.values());
    reconcile($("plugin-list"), list, (p) => p.id, createPluginCard, updatePluginCard);
    show($("plugins-empty"), list.length === 0);
    renderLogPluginChoice();
    renderSummary();
    renderAttention();
  }

  const STATE_BADGE = { running: "ok", degraded: "warn", starting: "info", backoff: "warn", failed: "bad", stopped: "", disabled: "" };
  const STATE_WORDS = {
    running: "running", degraded: "degraded", starting: "starting", backoff: "restarting",
    failed: "failed", stopped: "stopped", disabled: "disabled",
  };
  const pluginName = (p) => (p.name && p.name !== p.id ? `${p.name} (${p.id})` : p.id);

  function createPluginCard(p) {
    const r = {};
    const titleId = `plugin-title-${p.id}`;
    r.title = h("h3", { id: titleId });
    r.sub = h("span", { class: "sub" });
    r.state = h("span", { class: "badge" });
    r.flag = h("span", { class: "badge bad", hidden: true });
    r.desc = h("p", { class: "muted wrap" });
    r.error = h("p", { class: "alert", hidden: true }, r.errorText = h("span"), r.errorTime = h("time"));
    r.facts = h("dl", { class: "facts" });
    r.versionRows = h("tbody");
    r.versions = h("details", {}, r.versionsSummary = h("summary"),
      h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Version"), h("th", { scope: "col" }, "sha256"),
          h("th", { scope: "col" }, "Source"), h("th", { scope: "col" }, "Installed"), h("th", { scope: "col" }, h("span", { class: "skip" }, "Actions")))),
        r.versionRows)));
    r.connectors = h("ul", { class: "chips", "aria-label": `Connectors of ${p.id}` });
    r.latencyRows = h("tbody");
    r.calls = h("details", {}, h("summary", {}, "Counters and call latency"),
      r.counters = h("p", { class: "muted" }),
      h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Method"), h("th", { scope: "col" }, "Calls"),
          h("th", { scope: "col" }, "p50 ms"), h("th", { scope: "col" }, "p99 ms"))),
        r.latencyRows)));
    const act = (label, fn, cls) => h("button", { type: "button", class: cls, onclick: fn }, label);
    r.enable = act("Enable", () => lifecycle(p.id, "enable", "Enabling", "Enabled"), "primary");
    r.disable = act("Disable", () => lifecycle(p.id, "disable", "Disabling", "Disabled"));
    r.restart = act("Restart", () => lifecycle(p.id, "restart", "Restarting", "Restarted"));
    r.configure = act("Configure", () => openConfig(p.id));
    r.logs = act("Logs", () => { $("log-plugin").value = p.id; onLogPluginChange(); location.hash = "#logs"; });
    r.uninstall = act("Uninstall", () => uninstallPlugin(p.id, false), "danger");
    const pickId = `plugin-pick-${p.id}`;
    r.pick = h("select", { id: pickId, onchange: () => updatePluginCard(r.card, S.plugins.get(p.id)) });
    r.activate = act("Activate", () => activateVersion(p.id, r.pick.value));
    r.result = h("div", { class: "result", role: "status", "aria-live": "polite" });
    r.inuse = h("div", { class: "inuse", hidden: true });
    r.card = h("article", { class: "card", "aria-labelledby": titleId },
      h("div", { class: "card-head" }, r.title, r.sub, h("span", { class: "badges" }, r.state, r.flag)),
      r.desc, r.error, r.facts, r.connectors, r.versions, r.calls,
      h("div", { class: "actions" }, r.enable, r.disable, r.restart, r.configure, r.logs, r.uninstall),
      h("div", { class: "actions" }, h("label", { for: pickId }, "Version"), r.pick, r.activate),
      r.result, r.inuse);
    r.card._r = r;
    return r.card;
  }

  function updatePluginCard(card, p) {
    const r = card._r;
    const d = S.details.get(p.id) || {};
    const name = pluginName(p);
    const busy = S.busy.has("plugin:" + p.id);
    setText(r.title, p.name || p.id);
    setText(r.sub, `${p.id} · ${p.activeVersion ? "v" + p.activeVersion : "no active version"}`
      + (p.runningVersion && p.runningVersion !== p.activeVersion ? ` (running v${p.runningVersion})` : ""));
    setText(r.state, STATE_WORDS[p.state] || p.state);
    setClass(r.state, "badge " + (STATE_BADGE[p.state] || ""));
    setAttr(r.state, "aria-label", `State: ${STATE_WORDS[p.state] || p.state}`);
    // crash loops and the circuit breaker stand out
    let flag = "";
    if (p.state === "failed") flag = "circuit open";
    else if (p.state === "backoff") flag = "crash loop";
    setText(r.flag, flag);
    show(r.flag, !!flag);
    setText(r.desc, p.description || "");
    show(r.desc, !!p.description);

    let errorText = p.lastError || "";
    if (p.state === "failed") {
      errorText = `The circuit breaker is open after repeated failures: calls fail at once`
        + (p.nextAttemptInSeconds != null ? `; one automatic retry in ${Math.ceil(p.nextAttemptInSeconds)} s` : "")
        + `. Restart closes it.` + (p.lastError ? ` Last error: ${p.lastError}` : "");
    } else if (p.state === "backoff") {
      errorText = `Crash loop: restarting`
        + (p.nextAttemptInSeconds != null ? ` in ${Math.ceil(p.nextAttemptInSeconds)} s` : "")
        + ` after ${plural((d.counters || {}).crashes || p.restarts || 0, "failure")}.` + (p.lastError ? ` Last error: ${p.lastError}` : "");
    }
    setText(r.errorText, errorText ? (p.state === "running" ? "Last error: " : "") + errorText : "");
    setTime(r.errorTime, p.lastErrorAt);
    show(r.errorTime, !!p.lastErrorAt);
    show(r.error, !!errorText);
    setClass(r.error, p.state === "running" ? "alert warn" : "alert");

    const health = p.health == null ? "—" : typeof p.health === "string" ? p.health : (p.health.status || JSON.stringify(p.health));
    const facts = [
      ["Health", health],
      ["Enabled", p.enabled ? "yes" : "no"],
      ["Running since", d.startedAt ? when(d.startedAt) : "—"],
      ["Restarts", String(p.restarts ?? 0)],
    ];
    if (d.pid) facts.push(["Process", String(d.pid)]);
    // what the manifest asks for (SPEC 5.3), shown before the admin enables it
    const permissions = d.permissions ?? p.permissions;
    if (permissions !== undefined && permissions !== null) facts.push(["Permissions", describePermissions(permissions)]);
    const sandbox = d.sandbox ?? p.sandbox;
    if (sandbox) facts.push(["Isolation", describeSandbox(sandbox)]);
    reconcile(r.facts, facts, (f) => f[0], (f) => {
      const wrap = h("div", { style: undefined }, h("dt", {}, f[0]), h("dd"));
      wrap.style.display = "contents";
      return wrap;
    }, (node, f) => setText(node.lastElementChild, f[1]));

    const versions = p.versions || [];
    setText(r.versionsSummary, `Versions (${versions.length})`);
    reconcile(r.versionRows, versions, (v) => v.version, (v) => {
      const row = h("tr", {}, h("td"), h("td", { class: "mono wrap" }), h("td"), h("td", {}, h("time")), h("td"));
      row._del = h("button", { type: "button", class: "danger", onclick: () => uninstallVersion(p.id, v.version) }, "Uninstall");
      row.lastElementChild.append(row._del);
      return row;
    }, (row, v) => {
      const active = v.version === p.activeVersion;
      setText(row.children[0], (active ? `${v.version} (active)` : v.version)
        + (!active && v.permissionsChanged ? ` · asks for other permissions: ${describePermissions(v.permissions)}` : ""));
      setText(row.children[1], v.sha256 ? v.sha256.slice(0, 16) + "…" : "—");
      setAttr(row.children[1], "title", v.sha256 || null);
      setText(row.children[2], v.source || "—");
      setTime(row.children[3].firstChild, v.installedAt);
      setAttr(row._del, "aria-label", `Uninstall version ${v.version} of ${name}`);
      // the active version goes only with the plugin (or after another version is activated)
      show(row._del, !active);
      setDisabled(row._del, busy);
    });

    const connectors = p.connectors || [];
    reconcile(r.connectors, connectors, (c) => c.kind, () => h("li", { class: "chip" }), (li, c) => {
      const caps = (c.capabilities || []).join(", ");
      setText(li, `${c.displayName || c.kind} · ${c.kind} · ${authWords(c.authType)}${caps ? " · " + caps : ""}`);
    });
    show(r.connectors, connectors.length > 0);

    const c = d.counters || {};
    setText(r.counters, `Restarts ${c.restarts ?? p.restarts ?? 0} · crashes ${c.crashes ?? 0} · timeouts ${c.timeouts ?? 0}`
      + ` · protocol violations ${c.protocolViolations ?? 0} · oversized messages ${c.oversizedMessages ?? 0}`);
    const latency = Object.entries(d.latencyMs || {});
    reconcile(r.latencyRows, latency, (e) => e[0], () => h("tr", {}, h("td", { class: "mono" }), h("td"), h("td"), h("td")), (row, [method, s]) => {
      setText(row.children[0], method);
      setText(row.children[1], s.count ?? 0);
      setText(row.children[2], s.p50 == null ? "—" : Number(s.p50).toFixed(1));
      setText(row.children[3], s.p99 == null ? "—" : Number(s.p99).toFixed(1));
    });

    // actions only where they can work, all disabled while one runs
    show(r.enable, !p.enabled);
    show(r.disable, p.enabled);
    show(r.restart, p.enabled);
    const hasConfig = !!(d.configSchema && d.configSchema.properties && Object.keys(d.configSchema.properties).length);
    show(r.configure, hasConfig);
    for (const [btn, verb] of [[r.enable, "Enable"], [r.disable, "Disable"], [r.restart, "Restart"], [r.configure, "Configure"],
      [r.logs, "Show logs of"], [r.uninstall, "Uninstall"], [r.activate, "Activate the chosen version of"]]) {
      setAttr(btn, "aria-label", `${verb} ${name}`);
      setDisabled(btn, busy);
    }

    // the version picker keeps the admin's choice across updates
    const others = versions.map((v) => v.version);
    const chosen = r.pick.value;
    const optionKeys = Array.from(r.pick.options).map((o) => o.value).join("\n");
    if (optionKeys !== others.join("\n")) {
      r.pick.replaceChildren(...others.map((v) => h("option", { value: v }, v)));
      r.pick.value = others.includes(chosen) ? chosen : (p.activeVersion || others[0] || "");
    }
    for (const o of r.pick.options) setText(o, o.value === p.activeVersion ? `${o.value} (active)` : o.value);
    setAttr(r.pick, "aria-label", `Version of ${name} to activate`);
    setDisabled(r.pick, busy || others.length < 2);
    setDisabled(r.activate, busy || !r.pick.value || r.pick.value === p.activeVersion);

    renderResult(r.result, "plugin:" + p.id);
  }

  function describePermissions(value) {
    if (Array.isArray(value)) return value.length ? value.map(String).join(", ") : "none asked";
    if (value && typeof value === "object") {
      const parts = Object.entries(value).map(([k, v]) => (v === true ? k : v === false ? `no ${k}` : `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`));
      return parts.length ? parts.join(", ") : "none asked";
    }
    return String(value);
  }

  function describeSandbox(sb) {
    if (!sb.isolated) {
      return sb.dedicatedUid ? "its own uid only (no namespaces): the host's other files may be in reach"
        : "none: the plugin runs as the host's user, with the host's files in reach";
    }
    const limits = sb.limits || {};
    const parts = [sb.mechanism, sb.dedicatedUid ? "its own uid" : "the host's uid"];
    if (limits.memoryBytes) parts.push(`${Math.round(limits.memoryBytes / 1048576)} MiB memory`);
    if (limits.processes) parts.push(`${limits.processes} processes`);
    return parts.join(", ");
  }

  function authWords(type) {
    return { qr: "QR login", plugin_install: "bot install", credentials: "credentials" }[type] || type || "";
  }

  function setResult(key, text, kind) {
    if (text) S.results.set(key, { text, kind: kind || "" }); else S.results.delete(key);
  }
  function renderResult(node, key) {
    const r = S.results.get(key);
    setText(node, r ? r.text : "");
    setClass(node, "result " + (r ? r.kind : ""));
  }
  function rerenderPlugin(id) {
    const card = $("plugin-list").querySelector(`[data-key="${CSS.escape(id)}"]`);
    const p = S.plugins.get(id);
    if (card && p) updatePluginCard(card, p);
  }

  /** Run one action of a card: its buttons are disabled meanwhile, the outcome is shown next to it. */
  async function cardAction(key, busyText, fn, rerender) {
    if (S.busy.has(key)) return;
    S.busy.add(key);
    setResult(key, busyText + "…", "busy");
    rerender();
    try {
      const outcome = await fn();
      setResult(key, outcome || "", "ok");
    } catch (e) {
      setResult(key, `${busyText} failed: ${errorText(e)}`, "bad");
    } finally {
      S.busy.delete(key);
      rerender();
      scheduleRefresh("plugins", "connectors", "connections", "channels");
    }
  }

  function lifecycle(id, action, doing, done) {
    const key = "plugin:" + id;
    cardAction(key, `${doing} ${id}`, async () => {
      const view = await api("POST", `api/plugins/${enc(id)}/${action}`);
      mergeDetail(view);
      return `${done} ${id}: ${STATE_WORDS[view.state] || view.state}.`;
    }, () => rerenderPlugin(id));
  }

  function mergeDetail(view) {
    if (!view || !view.id) return;
    S.details.set(view.id, view);
    const listed = S.plugins.get(view.id);
    if (listed) S.plugins.set(view.id, { ...listed, ...view });
  }

  function activateVersion(id, version) {
    cardAction("plugin:" + id, `Activating ${id} ${version}`, async () => {
      const view = await api("POST", `api/plugins/${enc(id)}/activate`, { json: { version } });
      mergeDetail(view);
      return `Activated ${id} ${version}: ${STATE_WORDS[view.state] || view.state}.`;
    }, () => rerenderPlugin(id));
  }

  async function uninstallVersion(id, version) {
    const ok = await confirmDialog(`Uninstall ${id} ${version}?`,
      `Version ${version} of ${id} is removed from this server. The active version keeps running.`, `Uninstall ${version}`);
    if (!ok) return;
    cardAction("plugin:" + id, `Uninstalling ${id} ${version}`, async () => {
      const view = await api("DELETE", `api/plugins/${enc(id)}/versions/${enc(version)}`);
      mergeDetail(view);
      return `Uninstalled ${id} ${version}.`;
    }, () => rerenderPlugin(id));
  }

  async function uninstallPlugin(id, force) {
    const p = S.plugins.get(id) || { id };
    const ok = force
      ? await confirmDialog(`Force the uninstall of ${id}?`,
        `${pluginName(p)} is stopped and removed with all its versions although accounts use it. Those accounts stay listed but `
        + `stop working until a plugin that provides their connector is installed again.`, `Force uninstall`)
      : await confirmDialog(`Uninstall ${id}?`, `${pluginName(p)} is stopped and removed with all its versions.`, "Uninstall");
    if (!ok) return;
    const key = "plugin:" + id;
    const card = () => $("plugin-list").querySelector(`[data-key="${CSS.escape(id)}"]`);
    cardAction(key, `Uninstalling ${id}`, async () => {
      try {
        await api("DELETE", `api/plugins/${enc(id)}${force ? "?force=true" : ""}`);
      } catch (e) {
        if (e instanceof ApiError && e.status === 409 && e.code === "plugin_in_use") { showInUse(id, e); return "Not uninstalled: accounts use it (see below)."; }
        throw e;
      }
      S.plugins.delete(id);
      S.details.delete(id);
      S.results.delete(key);
      setResult("upload", `Uninstalled ${id}.`, "ok");
      renderResult($("upload-result"), "upload");
      return "";
    }, () => { const c = card(); if (c && S.plugins.has(id)) updatePluginCard(c, S.plugins.get(id)); else renderPlugins(); });
  }

  function showInUse(id, error) {
    const card = $("plugin-list").querySelector(`[data-key="${CSS.escape(id)}"]`);
    if (!card) return;
    const box = card._r.inuse;
    const n = error.details && error.details.connections;
    box.replaceChildren(
      h("p", {}, `${id} is in use: ${n ? plural(n, "account") + " connect" + (n === 1 ? "s" : "") : "accounts connect"} through it. `
        + `Log those accounts out first (Accounts tab), or force the uninstall: the accounts then stop working.`),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "danger", "aria-label": `Force uninstall ${id}`, onclick: () => { show(box, false); uninstallPlugin(id, true); } }, "Force uninstall"),
        h("button", { type: "button", "aria-label": `Keep ${id}`, onclick: () => { show(box, false); setResult("plugin:" + id, "", ""); rerenderPlugin(id); } }, "Keep it")));
    show(box, true);
  }

  // upload
  $("upload-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("upload-file");
    const file = input.files[0];
    if (!file) return;
    const button = ev.target.querySelector("button");
    const form = new FormData();
    form.append("file", file);
    setDisabled(button, true);
    setResult("upload", `Installing ${file.name}…`, "busy");
    renderResult($("upload-result"), "upload");
    try {
      const res = await api("POST", "api/plugins", { body: form });
      setResult("upload", `${res.created ? "Installed" : "Already installed"} ${res.id} ${res.version} (sha256 ${res.sha256.slice(0, 12)}…).`
        + (res.plugin && !res.plugin.enabled ? " Enable it to start it." : ""), "ok");
      input.value = "";
      scheduleRefresh("plugins", "connectors");
    } catch (e) {
      setResult("upload", `${file.name} was not installed: ${errorText(e)}`, "bad");
    } finally {
      setDisabled(button, false);
      renderResult($("upload-result"), "upload");
    }
  });

  // ------------------------------------------------------------------ dialogs

  function confirmDialog(title, text, okLabel) {
    const dialog = $("confirm-dialog");
    setText($("confirm-title"), title);
    setText($("confirm-text"), text);
    setText($("confirm-ok"), okLabel);
    const opener = document.activeElement;
    return new Promise((resolve) => {
      const finish = (value) => {
        $("confirm-ok").onclick = $("confirm-cancel").onclick = dialog.oncancel = null;
        if (dialog.open) dialog.close();
        if (opener && opener.isConnected) opener.focus();
        resolve(value);
      };
      $("confirm-ok").onclick = () => finish(true);
      $("confirm-cancel").onclick = () => finish(false);
      dialog.oncancel = (e) => { e.preventDefault(); finish(false); };
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  // ------------------------------------------------------------------ forms from JSON Schema

  const isSecret = (key, s) => !!(s && (s.writeOnly === true || s.format === "password" || s.secret === true || s["x-secret"] === true)) || SECRET_NAME.test(key);
  let fieldSeq = 0;

  /**
   * A form for an object `schema` in `container`, filled from `value`. Returns
   * {read() -> object, showErrors(list of {path, message}) -> unplaced messages, clear()}.
   * Validation is the server's (its 422 errors are shown at the fields), so the
   * form does not block a submission: min/max are hints.
   */
  function schemaForm(container, schema, value, prefix) {
    const fields = new Map();  // JSON pointer -> {input, error, read}
    const root = buildObject(container, schema || {}, value || {}, "", prefix, fields);
    return {
      read: () => root.read(),
      clear() { for (const f of fields.values()) { setText(f.error, ""); setAttr(f.input, "aria-invalid", null); } },
      showErrors(errors) {
        this.clear();
        const unplaced = [];
        let first = null;
        for (const err of errors || []) {
          let path = err.path || "/";
          const required = /^'(.+)' is a required property$/.exec(err.message || "");
          if (required) path = (path === "/" ? "" : path) + "/" + required[1];
          const field = fields.get(path === "" ? "/" : path);
          if (!field) { unplaced.push(path && path !== "/" ? `${path.slice(1)}: ${err.message}` : err.message); continue; }
          setText(field.error, field.error.textContent ? field.error.textContent + " " + err.message : err.message);
          setAttr(field.input, "aria-invalid", "true");
        }
        // the focus goes to the first field in the form's order that the server refused
        for (const f of fields.values()) if (f.input.getAttribute("aria-invalid") === "true") { first = f.input; break; }
        if (first && typeof first.focus === "function") first.focus();
        return unplaced;
      },
    };
  }

  /** `allOf`/`if`-`then` entries of the form {if: {properties: {k: {const | enum}}}, then: {required, properties}}. */
  function conditionsOf(schema) {
    const out = [];
    for (const part of [schema, ...(Array.isArray(schema.allOf) ? schema.allOf : [])]) {
      const cond = part && part.if, then = part && part.then;
      if (!cond || !then || !cond.properties) continue;
      const tests = Object.entries(cond.properties).map(([key, t]) => [key, t && "const" in t ? [t.const] : t && Array.isArray(t.enum) ? t.enum : null]);
      if (tests.some(([, values]) => values === null)) continue;  // only equality tests are understood
      out.push({ tests, keys: new Set([...(then.required || []), ...Object.keys(then.properties || {})]), required: new Set(then.required || []) });
    }
    return out;
  }

  function buildObject(container, schema, value, path, prefix, fields) {
    const props = schema.properties || {};
    const required = new Set(schema.required || []);
    const conditions = conditionsOf(schema);
    const built = new Map();
    for (const [key, sub] of Object.entries(props)) {
      const fieldPath = `${path}/${key}`;
      const current = value && Object.prototype.hasOwnProperty.call(value, key) ? value[key] : undefined;
      const when = conditions.filter((c) => c.keys.has(key));
      const note = when.length ? "Needed when " + when.map((c) => c.tests.map(([k, v]) => `${(props[k] && props[k].title) || k} is ${v.join(" or ")}`).join(" and ")).join("; or when ") + "." : "";
      built.set(key, { field: buildField(container, key, sub || {}, current, fieldPath, required.has(key), prefix, fields, note), when });
    }
    // a field that only some choices need (the Feishu link mode's app id and secret) shows with them
    const visible = (entry) => !entry.when.length || entry.when.some((c) => c.tests.every(([k, values]) => built.has(k) && values.includes(built.get(k).field.peek())));
    const applyConditions = () => { for (const entry of built.values()) show(entry.field.wrap, visible(entry)); };
    if (conditions.length) { container.addEventListener("input", applyConditions); container.addEventListener("change", applyConditions); applyConditions(); }
    return {
      read() {
        const out = {};
        // keys the form has no field for are kept as they are
        if (value && typeof value === "object") for (const [k, v] of Object.entries(value)) if (!(k in props)) out[k] = v;
        for (const [key, entry] of built) {
          if (!visible(entry)) continue;
          const v = entry.field.read();
          if (v !== undefined) out[key] = v;
        }
        return out;
      },
    };
  }

  function typeOf(s) {
    if (Array.isArray(s.type)) return s.type.find((t) => t !== "null") || "string";
    if (s.type) return s.type;
    if (s.enum) return "enum";
    if (s.properties) return "object";
    return "string";
  }

  /**
   * One field: {wrap, read, peek}. `read()` is what to send: a field the admin left alone that
   * was not in the config and is not required sends nothing (the plugin's default applies);
   * `peek()` is the value in force, for conditions.
   */
  function buildField(container, key, s, current, path, required, prefix, fields, note) {
    const id = `${prefix}-${++fieldSeq}`;
    const label = s.title || key;
    const type = typeOf(s);
    if (type === "object" && s.properties) {
      const set = h("fieldset", {}, h("legend", {}, label));
      if (s.description) set.append(h("p", { class: "help muted" }, s.description));
      container.append(set);
      const obj = buildObject(set, s, current && typeof current === "object" ? current : {}, path, prefix, fields);
      fields.set(path, { input: set, error: set.appendChild(h("p", { class: "field-error error", role: "alert" })) });
      // an object left empty that was not in the config stays out of it
      const read = () => { const v = obj.read(); return Object.keys(v).length || current !== undefined ? v : undefined; };
      return { wrap: set, read, peek: read };
    }
    const has = current !== undefined && current !== null;
    const hasDefault = s.default !== undefined;
    const help = [];
    if (s.description) help.push(s.description);
    if (note) help.push(note);
    if (type === "integer" || type === "number") {
      const lo = s.minimum ?? s.exclusiveMinimum, hi = s.maximum ?? s.exclusiveMaximum;
      if (lo !== undefined && hi !== undefined) help.push(`From ${lo} to ${hi}.`);
      else if (lo !== undefined) help.push(`At least ${lo}.`);
      else if (hi !== undefined) help.push(`At most ${hi}.`);
    }
    const secret = type === "string" && isSecret(key, s);
    const stored = has && current !== "";
    if (secret) help.push(stored ? "A value is stored: leave empty to keep it." : "No value is stored.");
    if (type === "array") help.push("One per line.");
    if (hasDefault && !secret && type !== "boolean" && !s.enum) help.push(`Default: ${Array.isArray(s.default) ? s.default.join(", ") : s.default}.`);
    const helpId = `${id}-help`, errorId = `${id}-error`;
    const describedBy = [help.length ? helpId : null, errorId].filter(Boolean).join(" ");
    const wrap = h("div", { class: "field" });
    const labelEl = h("label", { for: id }, label, required ? h("span", { class: "muted" }, " (required)") : null);
    let dirty = false;
    const keep = () => required || has || dirty;  // otherwise the plugin's default applies
    let input, value, peek;
    if (type === "boolean") {
      input = h("input", { id, type: "checkbox", "aria-describedby": describedBy });
      input.checked = has ? current === true : s.default === true;
      value = () => input.checked;
      wrap.classList.add("bool");
      wrap.append(input, labelEl);
    } else {
      const choices = Array.isArray(s.enum) ? s.enum : null;
      if (choices) {
        const unset = hasDefault ? `— default (${s.default}) —` : "— not set —";
        input = h("select", { id, "aria-describedby": describedBy },
          required ? null : h("option", { value: "" }, unset),
          choices.map((v, i) => h("option", { value: String(i) }, String(v))));
        const picked = choices.findIndex((v) => v === (has ? current : required ? s.default : undefined));
        input.value = picked >= 0 ? String(picked) : required ? "0" : "";
        value = () => (input.value === "" ? undefined : choices[Number(input.value)]);
        peek = () => (input.value === "" ? s.default : choices[Number(input.value)]);
      } else if (type === "array" && (!s.items || typeOf(s.items) === "string")) {
        input = h("textarea", { id, rows: 3, "aria-describedby": describedBy, spellcheck: "false" });
        input.value = Array.isArray(current) ? current.join("\n") : "";
        value = () => input.value.split("\n").map((x) => x.trim()).filter(Boolean);
      } else if (type === "integer" || type === "number") {
        input = h("input", { id, type: "number", step: type === "integer" ? "1" : "any", inputmode: type === "integer" ? "numeric" : "decimal",
          min: s.minimum, max: s.maximum, placeholder: hasDefault ? String(s.default) : undefined, "aria-describedby": describedBy });
        input.value = has ? String(current) : "";
        value = () => {
          const raw = input.value.trim();
          if (raw === "") return input.validity.badInput ? "not a number" : undefined;
          const n = Number(raw);
          return Number.isFinite(n) ? n : raw;  // the server says what is wrong with it
        };
      } else if (type === "string" && secret) {
        input = h("input", { id, type: "password", autocomplete: "new-password", "aria-describedby": describedBy,
          placeholder: stored ? "•••••• (stored)" : "" });
        // the stored value is never shown: empty sends back the mask, which keeps it
        value = () => (input.value !== "" ? input.value : stored ? MASK : undefined);
      } else if (type === "string") {
        input = h("input", { id, type: s.format === "uri" ? "url" : s.format === "email" ? "email" : "text",
          autocomplete: "off", "aria-describedby": describedBy, spellcheck: "false", placeholder: hasDefault ? String(s.default) : undefined });
        input.value = has ? String(current) : "";
        // suggestions from `anyOf: [{enum: [...]}, ...]` (Feishu's domain: feishu, lark or a URL)
        const suggested = (s.anyOf || []).flatMap((a) => (a && Array.isArray(a.enum) ? a.enum : []));
        if (suggested.length) {
          const list = h("datalist", { id: `${id}-list` }, suggested.map((v) => h("option", { value: String(v) })));
          input.setAttribute("list", list.id);
          wrap.append(list);
        }
        value = () => (input.value === "" && !required ? undefined : input.value);
      } else {
        // anything else (arrays of objects, unions): JSON text
        input = h("textarea", { id, rows: 3, class: "mono", "aria-describedby": describedBy, spellcheck: "false" });
        input.value = has ? JSON.stringify(current, null, 2) : "";
        value = () => { if (input.value.trim() === "") return undefined; try { return JSON.parse(input.value); } catch { return input.value; } };
        help.push("JSON.");
      }
      wrap.prepend(labelEl, input);
    }
    input.addEventListener("input", () => { dirty = true; });
    input.addEventListener("change", () => { dirty = true; });
    if (help.length) wrap.append(h("p", { class: "help", id: helpId }, help.join(" ")));
    const error = h("p", { class: "field-error", id: errorId });
    wrap.append(error);
    container.append(wrap);
    fields.set(path, { input, error });
    const read = () => (secret ? value() : keep() ? value() : undefined);
    return { wrap, read, peek: peek || (() => { const v = value(); return v === undefined ? s.default : v; }) };
  }

  // ------------------------------------------------------------------ config dialog

  let configFor = null;
  let configForm = null;
  async function openConfig(id) {
    const key = "plugin:" + id;
    let detail;
    try { detail = await api("GET", `api/plugins/${enc(id)}`); }
    catch (e) { setResult(key, `Cannot read the configuration of ${id}: ${errorText(e)}`, "bad"); rerenderPlugin(id); return; }
    configFor = id;
    setText($("config-title"), `Configure ${pluginName(detail)}`);
    const fieldsBox = $("config-fields");
    fieldsBox.replaceChildren();
    setText($("config-error"), "");
    configForm = schemaForm(fieldsBox, detail.configSchema, detail.config, "cfg");
    $("config-dialog").showModal();
    const first = fieldsBox.querySelector("input, select, textarea");
    if (first) first.focus();
  }
  function closeConfig() {
    const id = configFor;
    configFor = null;
    if ($("config-dialog").open) $("config-dialog").close();
    const card = id && $("plugin-list").querySelector(`[data-key="${CSS.escape(id)}"]`);
    if (card) card._r.configure.focus();
  }
  $("config-cancel").addEventListener("click", closeConfig);
  $("config-dialog").addEventListener("cancel", (e) => { e.preventDefault(); closeConfig(); });
  $("config-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = configFor;
    if (!id || !configForm) return;
    const button = ev.target.querySelector("button[type=submit]");
    setDisabled(button, true);
    setText($("config-error"), "");
    configForm.clear();
    try {
      const view = await api("PUT", `api/plugins/${enc(id)}/config`, { json: configForm.read() });
      mergeDetail(view);
      setResult("plugin:" + id, `Configuration saved: ${id} restarts with it (now ${STATE_WORDS[view.state] || view.state}).`, "ok");
      closeConfig();
      rerenderPlugin(id);
      scheduleRefresh("plugins");
    } catch (e) {
      if (e instanceof ApiError && e.status === 422) {
        const unplaced = configForm.showErrors((e.details && e.details.errors) || []);
        setText($("config-error"), unplaced.length ? "The server refused: " + unplaced.join("; ") : "The server refused some fields: see the messages next to them.");
      } else {
        setText($("config-error"), `Not saved: ${errorText(e)}`);
      }
    } finally {
      setDisabled(button, false);
    }
  });

  // ------------------------------------------------------------------ connectors and the connect wizard

  async function loadConnectors() {
    S.connectors = await api("GET", "api/connectors");
    reconcile($("connector-list"), S.connectors, (c) => c.kind, createConnector, updateConnector);
    show($("connectors-empty"), S.connectors.length === 0);
  }

  function createConnector(c) {
    const r = {};
    const titleId = `connector-title-${c.kind}`;
    r.title = h("h3", { id: titleId });
    r.sub = h("span", { class: "sub" });
    r.avail = h("span", { class: "badge" });
    r.caps = h("ul", { class: "chips", "aria-label": `Capabilities of ${c.kind}` });
    r.open = h("button", { type: "button", class: "primary", "aria-expanded": "false", onclick: () => toggleWizard(r, true) });
    r.wizard = h("form", { class: "wizard", hidden: true, novalidate: true, onsubmit: (ev) => { ev.preventDefault(); startSession(r); } });
    r.result = h("div", { class: "result", role: "status", "aria-live": "polite" });
    r.card = h("article", { class: "card compact", "aria-labelledby": titleId },
      h("div", { class: "card-head" }, r.title, r.sub, h("span", { class: "badges" }, r.avail)), r.caps,
      h("div", { class: "actions" }, r.open), r.wizard, r.result);
    r.card._r = r;
    r.kind = c.kind;
    return r.card;
  }

  function updateConnector(card, c) {
    const r = card._r;
    r.descriptor = c;
    setText(r.title, c.displayName || c.kind);
    setText(r.sub, `${c.kind} · ${authWords(c.authType)} · plugin ${c.pluginId}`);
    setText(r.avail, c.available ? "available" : "plugin not running");
    setClass(r.avail, "badge " + (c.available ? "ok" : ""));
    reconcile(r.caps, c.capabilities || [], (x) => x, () => h("li", { class: "chip" }), (li, x) => setText(li, x.replace(/_/g, " ")));
    setText(r.open, `Connect ${c.displayName || c.kind}…`);
    setAttr(r.open, "aria-label", `Connect a ${c.displayName || c.kind} account`);
    setDisabled(r.open, !c.available);
    // the form is rebuilt only when the schema itself changes, and never while open
    const schemaKey = JSON.stringify(c.optionsSchema || null);
    if (r.schemaKey !== schemaKey && r.wizard.hidden) { r.schemaKey = schemaKey; buildWizard(r, c); }
    renderResult(r.result, "connector:" + c.kind);
  }

  function buildWizard(r, c) {
    const name = c.displayName || c.kind;
    const nameId = `connect-name-${c.kind}`;
    r.wizard.replaceChildren(
      h("div", { class: "field" }, h("label", { for: nameId }, "Account name (shown here)"),
        r.nameInput = h("input", { id: nameId, type: "text", autocomplete: "off", placeholder: name })));
    const box = h("div");
    r.wizard.append(box);
    r.form = null;
    r.rawOptions = null;
    if (c.optionsSchema && c.optionsSchema.properties && Object.keys(c.optionsSchema.properties).length) {
      r.form = schemaForm(box, c.optionsSchema, {}, `connect-${c.kind}`);
    } else if (!c.optionsSchema) {
      // a connector that does not describe its options: a JSON box, folded away
      const rawId = `connect-raw-${c.kind}`;
      box.append(h("details", {}, h("summary", {}, "Advanced options"),
        h("div", { class: "field" }, h("label", { for: rawId }, "Options (JSON object)"),
          r.rawOptions = h("textarea", { id: rawId, rows: 3, class: "mono", spellcheck: "false", placeholder: "{}" }))));
    }
    r.wizardError = h("div", { class: "error", role: "alert" });
    r.wizard.append(r.wizardError, h("div", { class: "actions" },
      r.start = h("button", { type: "submit", class: "primary", "aria-label": `Start connecting ${name}` }, "Start"),
      h("button", { type: "button", "aria-label": `Close the ${name} connect form`, onclick: () => toggleWizard(r, false) }, "Close")));
  }

  function toggleWizard(r, open) {
    show(r.wizard, open);
    setAttr(r.open, "aria-expanded", open ? "true" : "false");
    show(r.open, !open);
    if (open) r.nameInput.focus();
    else { r.open.focus(); if (r.descriptor) { r.schemaKey = null; updateConnector(r.card, r.descriptor); } }
  }

  async function startSession(r) {
    const c = r.descriptor;
    let options = {};
    setText(r.wizardError, "");
    if (r.form) { r.form.clear(); options = r.form.read(); }
    else if (r.rawOptions && r.rawOptions.value.trim()) {
      try { options = JSON.parse(r.rawOptions.value); } catch (e) { setText(r.wizardError, `Options must be a JSON object: ${e.message}`); r.rawOptions.focus(); return; }
    }
    setDisabled(r.start, true);
    try {
      const view = await api("POST", "api/connector-sessions", { json: { kind: c.kind, displayName: r.nameInput.value.trim(), options } });
      setResult("connector:" + c.kind, "", "");
      toggleWizard(r, false);
      addSession(view);
      scheduleRefresh("connections");
    } catch (e) {
      const errors = e instanceof ApiError && e.details && e.details.errors;
      const unplaced = r.form && Array.isArray(errors) ? r.form.showErrors(errors) : [];
      setText(r.wizardError, `Not started: ${errorText(e)}${unplaced.length ? " (" + unplaced.join("; ") + ")" : ""}`);
    } finally {
      setDisabled(r.start, false);
    }
  }

  // ------------------------------------------------------------------ connector sessions

  const SESSION_WORDS = {
    pending: "Starting…",
    qr_ready: "Waiting for you to scan the QR code",
    scanned: "Scanned: confirm the login on your phone",
    confirmed: "Confirmed: finishing the connection…",
    installing: "Installing the bot…",
    waiting_for_user: "Waiting for you: enter the code shown on your phone",
    connected: "Connected",
    expired: "The QR code expired: start again",
    error: "Failed",
    cancelled: "Cancelled",
  };
  const savedSessions = () => { try { return JSON.parse(sessionStorage.getItem(SESSIONS_KEY) || "[]"); } catch { return []; } };
  const saveSessions = () => sessionStorage.setItem(SESSIONS_KEY, JSON.stringify(Array.from(S.sessions.keys())));

  async function restoreSessions() {
    for (const id of savedSessions()) {
      if (S.sessions.has(id)) continue;
      try { addSession(await api("GET", `api/connector-sessions/${enc(id)}`)); } catch { /* gone */ }
    }
    saveSessions();
  }

  function addSession(view) {
    const id = view.session.sessionId;
    const existing = S.sessions.get(id);
    if (existing) { existing.view = view; renderSessions(); return; }
    S.sessions.set(id, { view, stream: null });
    saveSessions();
    renderSessions();
    followSession(id);
  }

  function renderSessions() {
    reconcile($("session-list"), Array.from(S.sessions.values()).map((s) => s.view).reverse(), (v) => v.session.sessionId, createSession, updateSession);
  }

  function createSession(view) {
    const r = {};
    const id = view.session.sessionId;
    const titleId = `session-title-${id}`;
    r.title = h("h3", { id: titleId });
    r.sub = h("span", { class: "sub mono" }, id);
    r.status = h("p", { class: "status", role: "status", "aria-live": "polite" });
    r.error = h("p", { class: "alert", hidden: true });
    r.qr = h("img", { class: "qr", hidden: true, width: 300, height: 300, alt: "" });
    r.instructions = h("ol");
    const codeId = `session-code-${id}`;
    r.codeForm = h("form", { hidden: true, novalidate: true, onsubmit: (ev) => { ev.preventDefault(); sendInput(id, r); } },
      h("div", { class: "field" }, h("label", { for: codeId }, "Verification code"),
        r.code = h("input", { id: codeId, type: "text", inputmode: "numeric", autocomplete: "one-time-code" })),
      h("div", { class: "actions" }, r.send = h("button", { type: "submit", class: "primary" }, "Send code")));
    r.result = h("div", { class: "result", role: "status" });
    r.cancel = h("button", { type: "button", class: "danger", onclick: () => cancelSession(id, r) }, "Cancel");
    r.dismiss = h("button", { type: "button", onclick: () => dismissSession(id) }, "Dismiss");
    r.card = h("article", { class: "card session", "aria-labelledby": titleId },
      h("div", { class: "card-head" }, r.title, r.sub), r.status, r.error, r.qr, r.instructions, r.codeForm, r.result,
      h("div", { class: "actions" }, r.cancel, r.dismiss));
    r.card._r = r;
    return r.card;
  }

  function updateSession(card, view) {
    const r = card._r;
    const s = view.session;
    const conn = view.connection || {};
    const label = conn.displayName || s.displayName || s.kind;
    setText(r.title, `Connecting ${label}`);
    let words = SESSION_WORDS[s.status] || s.status;
    if (s.status === "connected") words = `Connected as ${s.displayName || conn.displayName || s.accountId || conn.accountId || label}`;
    if (s.status === "error" && s.error) words = `Failed: ${s.error}`;
    setText(r.status, words);
    setText(r.error, s.status !== "error" && s.error ? s.error : "");
    show(r.error, s.status !== "error" && !!s.error);
    const image = typeof s.qrImage === "string" && /^data:image\//.test(s.qrImage) ? s.qrImage : "";
    const showQr = !!image && ["pending", "qr_ready", "scanned"].includes(s.status);
    if (image && r.qr.getAttribute("src") !== image) r.qr.src = image;
    setAttr(r.qr, "alt", `QR code to scan with your phone to log in to ${label}`);
    show(r.qr, showQr);
    const instructions = Array.isArray(s.instructions) ? s.instructions : [];
    reconcile(r.instructions, instructions.map((t, i) => [i, t]), (x) => x[0], () => h("li"), (li, x) => setText(li, x[1]));
    show(r.instructions, instructions.length > 0);
    show(r.codeForm, s.status === "waiting_for_user");
    setAttr(r.code, "aria-label", null);
    setAttr(r.send, "aria-label", `Send the verification code for ${label}`);
    const terminal = TERMINAL.has(s.status);
    show(r.cancel, !terminal);
    setAttr(r.cancel, "aria-label", `Cancel connecting ${label}`);
    setText(r.dismiss, s.status === "connected" ? "Done" : "Dismiss");
    setAttr(r.dismiss, "aria-label", `${s.status === "connected" ? "Done with" : "Dismiss"} the ${label} sign-in`);
    show(r.dismiss, terminal);
    setClass(r.card, "card session" + (["error", "expired"].includes(s.status) ? " expired" : ""));
    renderResult(r.result, "session:" + s.sessionId);
  }

  async function followSession(id) {
    const entry = S.sessions.get(id);
    if (!entry || TERMINAL.has(entry.view.session.status)) return;
    const gen = S.gen;
    let delay = 1000;
    while (gen === S.gen && S.sessions.has(id) && !TERMINAL.has(S.sessions.get(id).view.session.status)) {
      const abort = new AbortController();
      S.sessions.get(id).stream = abort;
      try {
        const res = await fetch(`api/connector-sessions/${enc(id)}/events`, { headers: { Authorization: "Bearer " + token() }, signal: abort.signal, cache: "no-store" });
        if (res.status === 401) { signOut("The server refused the token: sign in again."); return; }
        if (res.status === 404) { dismissSession(id); return; }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        setLost(false);
        delay = 1000;
        await readEvents(res.body, gen, (type, data) => {
          if (type !== "session" || !data || !data.session || !S.sessions.has(id)) return;
          S.sessions.get(id).view = data;
          renderSessions();
          if (TERMINAL.has(data.session.status)) scheduleRefresh("connections", "channels", "overview");
        });
      } catch (e) {
        if (e.name === "AbortError") return;
        if (e instanceof TypeError) setLost(true);
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
      // the stream ended early: read the current view once before following again
      try { const view = await api("GET", `api/connector-sessions/${enc(id)}`); if (S.sessions.has(id)) { S.sessions.get(id).view = view; renderSessions(); } } catch { /* retried */ }
    }
  }

  async function sendInput(id, r) {
    const value = r.code.value.trim();
    if (!value) { r.code.focus(); return; }
    setDisabled(r.send, true);
    try {
      const view = await api("POST", `api/connector-sessions/${enc(id)}/input`, { json: { input: value } });
      r.code.value = "";
      setResult("session:" + id, "", "");
      if (S.sessions.has(id)) { S.sessions.get(id).view = view; renderSessions(); }
    } catch (e) {
      setResult("session:" + id, `The code was not accepted: ${errorText(e)}`, "bad");
      renderSessions();
    } finally { setDisabled(r.send, false); }
  }

  async function cancelSession(id, r) {
    setDisabled(r.cancel, true);
    try {
      const view = await api("POST", `api/connector-sessions/${enc(id)}/cancel`);
      if (S.sessions.has(id)) { S.sessions.get(id).view = view; renderSessions(); }
      scheduleRefresh("connections");
    } catch (e) {
      setResult("session:" + id, `Not cancelled: ${errorText(e)}`, "bad");
      renderSessions();
    } finally { setDisabled(r.cancel, false); }
  }

  function dismissSession(id) {
    const entry = S.sessions.get(id);
    if (entry && entry.stream) entry.stream.abort();
    S.sessions.delete(id);
    S.results.delete("session:" + id);
    saveSessions();
    const focusWasInside = document.activeElement && document.activeElement.closest && document.activeElement.closest(`[data-key="${CSS.escape(id)}"]`);
    renderSessions();
    if (focusWasInside) $("main").focus();
  }

  // ------------------------------------------------------------------ connections (accounts)

  const isExpired = (c) => c.status === "error" && /session[_ ]expired/i.test(c.error || "");
  const accountName = (c) => c.displayName || c.accountId || c.connectionId;

  async function loadConnections() {
    S.connections = await api("GET", "api/connections");
    renderConnections();
  }
  $("show-revoked").addEventListener("change", () => renderConnections());

  function renderConnections() {
    const showRevoked = $("show-revoked").checked;
    const list = S.connections.filter((c) => showRevoked || c.status !== "revoked")
      .sort((a, b) => Number(isExpired(b)) - Number(isExpired(a)));
    reconcile($("connection-list"), list, (c) => c.connectionId, createConnection, updateConnection);
    show($("connections-empty"), list.length === 0);
    renderAttention();
    renderChannelChoice();
    renderSummary();
  }

  const CONNECTION_BADGE = { connected: "ok", pairing: "info", pending: "info", disconnected: "warn", error: "bad", revoked: "" };

  function createConnection(c) {
    const r = {};
    const titleId = `connection-title-${c.connectionId}`;
    r.title = h("h3", { id: titleId });
    r.sub = h("span", { class: "sub mono" });
    r.status = h("span", { class: "badge" });
    r.expired = h("p", { class: "alert", hidden: true });
    r.error = h("p", { class: "alert warn", hidden: true });
    r.facts = h("dl", { class: "facts" },
      h("dt", {}, "Kind"), r.kind = h("dd"), h("dt", {}, "Channel"), r.channel = h("dd", { class: "mono" }),
      h("dt", {}, "Account id"), r.account = h("dd", { class: "mono" }), h("dt", {}, "Updated"), h("dd", {}, r.updated = h("time")));
    r.webhook = h("p", { class: "muted wrap", hidden: true });
    r.relogin = h("button", { type: "button", class: "primary", onclick: () => relogin(c.connectionId) }, "Log in again");
    r.logout = h("button", { type: "button", class: "danger", onclick: () => logout(c.connectionId) }, "Log out");
    r.result = h("div", { class: "result", role: "status", "aria-live": "polite" });
    r.card = h("article", { class: "card compact", "aria-labelledby": titleId },
      h("div", { class: "card-head" }, r.title, r.sub, h("span", { class: "badges" }, r.status)),
      r.expired, r.error, r.facts, r.webhook, h("div", { class: "actions" }, r.relogin, r.logout), r.result);
    r.card._r = r;
    return r.card;
  }

  function updateConnection(card, c) {
    const r = card._r;
    const name = accountName(c);
    const expired = isExpired(c);
    const busy = S.busy.has("connection:" + c.connectionId);
    setText(r.title, name);
    setText(r.sub, c.connectionId);
    setText(r.status, expired ? "session expired" : c.status);
    setClass(r.status, "badge " + (CONNECTION_BADGE[c.status] || ""));
    setText(r.expired, expired ? `The platform ended this account's session. Log in again to resume it: its channel and waiting messages are kept.` : "");
    show(r.expired, expired);
    setText(r.error, !expired && c.error ? c.error : "");
    show(r.error, !expired && !!c.error);
    setText(r.kind, c.kind);
    setText(r.channel, c.channelId);
    setText(r.account, c.accountId || "—");
    setTime(r.updated, c.updatedAt);
    setText(r.webhook, c.webhookUrl ? `Webhook URL for the platform: ${c.webhookUrl}` : "");
    show(r.webhook, !!c.webhookUrl);
    setClass(r.card, "card compact" + (expired ? " expired" : ""));
    show(r.relogin, ["error", "disconnected"].includes(c.status));
    setAttr(r.relogin, "aria-label", `Log in again to ${name}`);
    show(r.logout, c.status !== "revoked");
    setAttr(r.logout, "aria-label", `Log out ${name}`);
    setDisabled(r.relogin, busy);
    setDisabled(r.logout, busy);
    renderResult(r.result, "connection:" + c.connectionId);
  }

  function rerenderConnections() { renderConnections(); }

  async function logout(connectionId) {
    const c = S.connections.find((x) => x.connectionId === connectionId) || { connectionId };
    const ok = await confirmDialog(`Log out ${accountName(c)}?`,
      `The account is logged out on the platform and its channel stops. Connecting it again needs a new sign-in.`, "Log out");
    if (!ok) return;
    const key = "connection:" + connectionId;
    cardActionConn(key, `Logging out ${accountName(c)}`, async () => {
      await api("POST", `api/connections/${enc(connectionId)}/logout`);
      return `Logged out ${accountName(c)}.`;
    });
  }

  function relogin(connectionId) {
    const c = S.connections.find((x) => x.connectionId === connectionId) || { connectionId };
    cardActionConn("connection:" + connectionId, `Starting a new sign-in for ${accountName(c)}`, async () => {
      const view = await api("POST", `api/connections/${enc(connectionId)}/relogin`);
      if (view && view.session) { addSession(view); location.hash = "#accounts"; }
      return "A new sign-in started: follow it above.";
    });
  }

  async function cardActionConn(key, doing, fn) {
    if (S.busy.has(key)) return;
    S.busy.add(key);
    setResult(key, doing + "…", "busy");
    rerenderConnections();
    try { setResult(key, (await fn()) || "", "ok"); }
    catch (e) { setResult(key, `${doing} failed: ${errorText(e)}`, "bad"); }
    finally { S.busy.delete(key); rerenderConnections(); scheduleRefresh("connections", "channels"); }
  }

  function renderAttention() {
    const expired = S.connections.filter(isExpired);
    const box = $("attention");
    // the host's plugin sandbox (SPEC 5.3): one line when plugins run without isolation
    const sandbox = Array.from(S.plugins.values()).map((p) => p.sandbox).find(Boolean);
    const unsafe = sandbox && !sandbox.isolated ? [{ sandbox }] : [];
    reconcile($("attention-host"), unsafe, () => "sandbox", () => h("p", { class: "alert warn" }), (p, x) => {
      setText(p, `Plugins run without isolation: ${x.sandbox.warning || "no sandbox mechanism works on this machine"}`);
    });
    show($("attention-host"), unsafe.length > 0);
    reconcile($("attention-accounts"), expired, (c) => c.connectionId, (c) => {
      const p = h("p", { class: "alert" }, h("span"), " ",
        h("button", { type: "button", class: "primary", onclick: () => relogin(c.connectionId) }, "Log in again"));
      return p;
    }, (p, c) => {
      setText(p.firstChild, `${accountName(c)} (${c.kind}) must log in again: the platform ended its session.`);
      setAttr(p.lastChild, "aria-label", `Log in again to ${accountName(c)}`);
      setDisabled(p.lastChild, S.busy.has("connection:" + c.connectionId));
    });
    show(box, expired.length > 0 || unsafe.length > 0);
  }

  // ------------------------------------------------------------------ channels

  const CHANNEL_BADGE = { running: "ok", starting: "info", failed: "bad", stopped: "", disabled: "", removed: "" };
  async function loadChannels() {
    S.channels = await api("GET", "api/channels");
    reconcile($("channel-list"), S.channels, (c) => c.channelId, (c) => {
      const r = {};
      r.title = h("h3", { class: "mono wrap" });
      r.state = h("span", { class: "badge" });
      r.facts = h("dl", { class: "facts" }, h("dt", {}, "Kind"), r.kind = h("dd"), h("dt", {}, "Account"), r.account = h("dd"),
        h("dt", {}, "Started"), h("dd", {}, r.started = h("time")));
      r.error = h("p", { class: "alert", hidden: true });
      const card = h("article", { class: "card compact" }, h("div", { class: "card-head" }, r.title, h("span", { class: "badges" }, r.state)), r.facts, r.error);
      card._r = r;
      return card;
    }, (card, c) => {
      const r = card._r;
      setText(r.title, c.channelId);
      setText(r.state, c.state);
      setClass(r.state, "badge " + (CHANNEL_BADGE[c.state] || ""));
      setText(r.kind, [c.connectorKind, c.kind, c.mode].filter(Boolean).join(" · "));
      const conn = S.connections.find((x) => x.channelId === c.channelId);
      setText(r.account, conn ? accountName(conn) : "—");
      setTime(r.started, c.startedAt);
      setText(r.error, c.lastError || "");
      show(r.error, !!c.lastError);
    });
    show($("channels-empty"), S.channels.length === 0);
    renderChannelChoice();
    renderSummary();
  }

  // ------------------------------------------------------------------ deliveries

  function renderChannelChoice() {
    const select = $("filter-channel");
    const ids = new Set(S.channels.map((c) => c.channelId));
    for (const c of S.connections) if (c.status !== "revoked") ids.add(c.channelId);
    const wanted = ["", ...Array.from(ids).sort()];
    const have = Array.from(select.options).map((o) => o.value);
    if (wanted.join("\n") === have.join("\n")) return;
    const chosen = select.value;
    select.replaceChildren(...wanted.map((id) => {
      const conn = S.connections.find((x) => x.channelId === id);
      return h("option", { value: id }, id === "" ? "Any channel" : conn ? `${accountName(conn)} (${id})` : id);
    }));
    select.value = wanted.includes(chosen) ? chosen : "";
  }

  let deliveriesQuery = "";
  const keptDeliveries = new Map();  // "delivery:<id>" -> id of deliveries retried since the filter last changed
  async function loadDeliveries() {
    const params = new URLSearchParams();
    const status = $("filter-status").value, channelId = $("filter-channel").value, peerId = $("filter-peer").value.trim();
    if (status) params.set("status", status);
    if (channelId) params.set("channelId", channelId);
    if (peerId) params.set("peerId", peerId);
    const query = params.toString();
    deliveriesQuery = query;
    let list;
    try { list = await api("GET", "api/deliveries" + (query ? "?" + query : "")); }
    catch (e) {
      if (query !== deliveriesQuery) return;
      if (e instanceof ApiError) { setText($("deliveries-note"), `The server did not list these deliveries: ${errorText(e)}`); reconcile($("delivery-list"), [], () => "", null, null); show($("deliveries-empty"), false); }
      throw e;
    }
    if (query !== deliveriesQuery) return;  // a newer filter is on its way
    const listed = new Set(list.map((d) => "delivery:" + d.id));
    for (const [key, id] of Array.from(keptDeliveries)) {
      if (listed.has(key)) continue;
      try { list.push(await api("GET", `api/deliveries/${enc(id)}`)); } catch { keptDeliveries.delete(key); }
    }
    if (query !== deliveriesQuery) return;
    setText($("deliveries-note"), "");
    S.deadCount = status === "dead" && !channelId && !peerId ? list.length : S.deadCount;
    reconcile($("delivery-list"), list, (d) => `${d.direction || "outbound"}:${d.id}`, createDelivery, updateDelivery);
    show($("deliveries-empty"), list.length === 0);
    renderSummary();
  }
  let peerTimer = null;
  $("delivery-filter").addEventListener("change", () => { keptDeliveries.clear(); scheduleRefresh("deliveries"); });
  $("delivery-filter").addEventListener("submit", (ev) => { ev.preventDefault(); keptDeliveries.clear(); scheduleRefresh("deliveries"); });
  $("filter-peer").addEventListener("input", () => { keptDeliveries.clear(); clearTimeout(peerTimer); peerTimer = setTimeout(() => scheduleRefresh("deliveries"), 300); });

  const DELIVERY_BADGE = { sent: "ok", queued: "info", sending: "info", deferred: "warn", dead: "bad", failed: "bad" };
  const isDead = (d) => d.status === "dead" || d.status === "failed";
  const peerOf = (d) => d.peerId || (d.target && d.target.peerId) || d.sessionId || "";

  function createDelivery(d) {
    const r = {};
    r.title = h("h3", { class: "mono wrap" });
    r.state = h("span", { class: "badge" });
    r.facts = h("dl", { class: "facts" },
      h("dt", {}, "Direction"), r.direction = h("dd"), h("dt", {}, "Channel"), r.channel = h("dd", { class: "mono wrap" }),
      h("dt", {}, "Peer"), r.peer = h("dd", { class: "mono wrap" }), h("dt", {}, "Attempts"), r.attempts = h("dd"),
      h("dt", {}, "Created"), h("dd", {}, r.created = h("time")), h("dt", {}, "Updated"), h("dd", {}, r.updated = h("time")));
    r.reason = h("p", { class: "alert", hidden: true });
    r.retry = h("button", { type: "button", class: "primary", onclick: () => deliveryAction(r, "retry") }, "Retry");
    r.discard = h("button", { type: "button", class: "danger", onclick: () => deliveryAction(r, "discard") }, "Discard");
    r.result = h("div", { class: "result", role: "status", "aria-live": "polite" });
    r.card = h("article", { class: "card compact" }, h("div", { class: "card-head" }, r.title, h("span", { class: "badges" }, r.state)),
      r.facts, r.reason, h("div", { class: "actions" }, r.retry, r.discard), r.result);
    r.card._r = r;
    return r.card;
  }

  function updateDelivery(card, d) {
    const r = card._r;
    r.delivery = d;
    const ident = d.requestId || d.messageId || String(d.id);
    setText(r.title, ident);
    const state = d.status === "failed" ? "dead" : d.status;
    setText(r.state, state + (d.reason && state !== "dead" ? ` (${d.reason})` : ""));
    setClass(r.state, "badge " + (DELIVERY_BADGE[d.status] || ""));
    setText(r.direction, d.direction || "outbound");
    setText(r.channel, d.channelId);
    setText(r.peer, peerOf(d) || "—");
    setText(r.attempts, d.attempts ?? 0);
    setTime(r.created, d.createdAt);
    setTime(r.updated, d.updatedAt);
    const reason = d.lastError || (typeof d.reason === "string" && isDead(d) ? d.reason : "");
    setText(r.reason, reason ? `Reason: ${reason}` : "");
    show(r.reason, !!reason);
    const dead = isDead(d);
    const busy = S.busy.has("delivery:" + d.id);
    show(r.retry, dead);
    show(r.discard, dead);
    setAttr(r.retry, "aria-label", `Retry delivery ${ident}`);
    setAttr(r.discard, "aria-label", `Discard delivery ${ident}`);
    setDisabled(r.retry, busy);
    setDisabled(r.discard, busy);
    renderResult(r.result, "delivery:" + d.id);
  }

  async function deliveryAction(r, action) {
    const d = r.delivery;
    const key = "delivery:" + d.id;
    const ident = d.requestId || d.messageId || String(d.id);
    if (action === "discard" && !(await confirmDialog("Discard this delivery?", `${ident} is removed and never sent.`, "Discard"))) return;
    S.busy.add(key);
    // a retried delivery leaves the "dead" list at once (live updates may come before the answer):
    // its card stays where the admin clicked, showing its new state, until the filter changes
    if (action === "retry") keptDeliveries.set(key, d.id);
    setResult(key, action === "retry" ? "Retrying…" : "Discarding…", "busy");
    updateDelivery(r.card, d);
    try {
      if (action === "retry") await api("POST", `api/deliveries/${enc(d.id)}/retry`);
      else await api("DELETE", `api/deliveries/${enc(d.id)}`);
      setResult(key, action === "retry" ? "Queued again." : "Discarded.", "ok");
    } catch (e) {
      setResult(key, `${action === "retry" ? "Retry" : "Discard"} failed: ${errorText(e)}`, "bad");
      keptDeliveries.delete(key);
    } finally {
      S.busy.delete(key);
      if (r.card.isConnected) updateDelivery(r.card, r.delivery);
      scheduleRefresh("deliveries", "overview");
    }
  }

  // ------------------------------------------------------------------ overview

  async function loadOverview() {
    if (currentTab() !== "overview") return;
    let data;
    try { data = await api("GET", "api/overview"); }
    catch (e) { if (e instanceof ApiError) { reconcile($("charts"), [], () => "", null, null); show($("charts-empty"), true); } throw e; }
    const channels = data.channels || [];
    reconcile($("charts"), channels, (c) => c.channelId, createChart, (node, c) => updateChart(node, c, data));
    show($("charts-empty"), channels.length === 0);
    try { S.deadCount = (await api("GET", "api/deliveries?status=dead")).length; } catch { /* shown as — */ }
    renderSummary();
  }

  function renderSummary() {
    const plugins = Array.from(S.plugins.values());
    const conns = S.connections.filter((c) => c.status !== "revoked");
    const tiles = [
      ["plugins", `${plugins.filter((p) => p.state === "running" || p.state === "degraded").length}/${plugins.length}`, "plugins running"],
      ["accounts", `${conns.filter((c) => c.status === "connected").length}/${conns.length}`, "accounts connected"],
      ["expired", String(S.connections.filter(isExpired).length), "accounts must log in again"],
      ["channels", String(S.channels.filter((c) => c.state === "running").length), "channels running"],
      ["dead", S.deadCount === undefined ? "—" : String(S.deadCount), "dead deliveries"],
    ];
    reconcile($("summary"), tiles, (t) => t[0], () => h("div", { class: "tile" }, h("span", { class: "n" }), h("span", { class: "what" })), (node, t) => {
      setText(node.firstChild, t[1]);
      setText(node.lastChild, t[2]);
    });
  }

  const SERIES = [["in", "received"], ["sent", "sent"], ["deferred", "deferred"], ["dead", "dead"]];
  function createChart(c) {
    const r = {};
    const titleId = `chart-title-${c.channelId}`;
    r.title = h("h3", { id: titleId });
    r.svg = svg("svg", { viewBox: "0 0 300 110", role: "img" });
    r.totals = h("ul", { class: "legend" });
    r.card = h("figure", { class: "card chart", "aria-labelledby": titleId }, r.title, r.svg, r.totals);
    r.card.style.margin = "0";
    r.card._r = r;
    return r.card;
  }

  function updateChart(node, c, data) {
    const r = node._r;
    const name = c.displayName || c.connectionId || c.channelId;
    setText(r.title, c.kind ? `${name} (${c.kind})` : name);
    const s = c.series || {};
    const minutes = data.minutes || 60;
    const totals = Object.fromEntries(SERIES.map(([k]) => [k, (s[k] || []).reduce((a, b) => a + b, 0)]));
    reconcile(r.totals, SERIES, (x) => x[0], (x) => h("li", { class: x[0] }), (li, [k, words]) => setText(li, `${totals[k]} ${words}`));
    // messages in (up) and deliveries by outcome (stacked, down) per minute, oldest on the left
    const w = 300, mid = 55, top = 6, half = 44, step = w / minutes;
    const peak = Math.max(1, ...Array.from({ length: minutes }, (_, i) => Math.max((s.in || [])[i] || 0,
      ((s.sent || [])[i] || 0) + ((s.deferred || [])[i] || 0) + ((s.dead || [])[i] || 0))));
    const parts = [svg("line", { class: "axis", x1: 0, x2: w, y1: mid, y2: mid })];
    for (let i = 0; i < minutes; i++) {
      const x = i * step + 0.5, bw = Math.max(1, step - 1);
      const inH = (((s.in || [])[i] || 0) / peak) * half;
      if (inH > 0) parts.push(svg("rect", { class: "bar-in", x, width: bw, y: mid - inH, height: inH }));
      let y = mid;
      for (const k of ["sent", "deferred", "dead"]) {
        const hgt = (((s[k] || [])[i] || 0) / peak) * half;
        if (hgt > 0) { parts.push(svg("rect", { class: `bar-${k}`, x, width: bw, y, height: hgt })); y += hgt; }
      }
    }
    const label = (x, text, anchor) => { const t = svg("text", { class: "axis-label", x, y: 108, "text-anchor": anchor }); t.textContent = text; return t; };
    parts.push(label(0, `${minutes} min ago`, "start"), label(w, "now", "end"));
    const peakLabel = svg("text", { class: "axis-label", x: 2, y: top + 4 }); peakLabel.textContent = `${peak}/min`;
    parts.push(peakLabel);
    r.svg.replaceChildren(...parts);  // a picture only: nothing in it takes focus or input
    setAttr(r.svg, "aria-label", `Last ${minutes} minutes for ${name}: ${totals.in} messages received, ${totals.sent} sent, ${totals.deferred} deferred, ${totals.dead} dead`);
  }

  // ------------------------------------------------------------------ logs

  const LEVELS = [[/\b(CRITICAL|FATAL)\b/, 50], [/\bERROR\b/, 40], [/\bWARN(ING)?\b/, 30], [/\bINFO\b/, 20], [/\b(DEBUG|TRACE)\b/, 10]];
  function levelOf(text) {
    for (const [re, n] of LEVELS) if (re.test(text)) return n;
    return 20;  // a line without a level reads as information
  }

  function renderLogPluginChoice() {
    const select = $("log-plugin");
    const ids = Array.from(S.plugins.keys()).sort();
    const have = Array.from(select.options).map((o) => o.value);
    if (ids.join("\n") !== have.join("\n")) {
      const chosen = select.value;
      select.replaceChildren(...ids.map((id) => h("option", { value: id }, pluginName(S.plugins.get(id)))));
      select.value = ids.includes(chosen) ? chosen : ids[0] || "";
      if (select.value !== S.logs.plugin) onLogPluginChange();
    }
  }

  function onLogPluginChange() {
    S.logs = { plugin: $("log-plugin").value, lines: [], after: 0 };
    $("log-view").replaceChildren();
    logTick();
  }
  $("log-plugin").addEventListener("change", onLogPluginChange);
  $("log-level").addEventListener("change", applyLogFilter);
  $("log-text").addEventListener("input", applyLogFilter);
  $("log-follow").addEventListener("change", () => { if ($("log-follow").checked) logTick(); });
  $("log-controls").addEventListener("submit", (ev) => ev.preventDefault());

  function logVisible(line) {
    const min = Number($("log-level").value);
    const text = $("log-text").value.trim().toLowerCase();
    return line.level >= min && (!text || line.line.toLowerCase().includes(text));
  }

  function applyLogFilter() {
    const view = $("log-view");
    for (const li of view.children) show(li, logVisible(li._line));
    renderLogStatus();
  }

  function renderLogStatus() {
    const shown = Array.from($("log-view").children).filter((li) => !li.hidden).length;
    const total = S.logs.lines.length;
    setText($("log-status"), S.logs.plugin ? `${shown} of ${plural(total, "line")} of ${S.logs.plugin}${$("log-follow").checked ? ", following" : ""}.` : "No plugin.");
  }

  let logTicking = false;
  async function logTick() {
    if (logTicking || !token() || currentTab() !== "logs" || !S.logs.plugin) return;
    logTicking = true;
    const plugin = S.logs.plugin;
    try {
      const lines = await api("GET", `api/plugins/${enc(plugin)}/logs?timestamps=true&tail=1000&after=${S.logs.after}`);
      if (plugin !== S.logs.plugin) return;
      const view = $("log-view");
      const atBottom = view.scrollTop + view.clientHeight >= view.scrollHeight - 8;
      const fresh = [];
      for (const entry of lines) {
        if (entry.seq <= S.logs.after) continue;
        const line = { ...entry, level: levelOf(entry.line) };
        S.logs.after = entry.seq;
        S.logs.lines.push(line);
        const li = h("li", { class: `lv-${line.level}` }, timeEl(line.at), line.line);
        li._line = line;
        li.hidden = !logVisible(line);
        fresh.push(li);
      }
      if (fresh.length) view.append(...fresh);
      while (S.logs.lines.length > LOG_KEEP) { S.logs.lines.shift(); view.firstElementChild.remove(); }
      if (fresh.length && atBottom) view.scrollTop = view.scrollHeight;
      renderLogStatus();
    } catch (e) {
      if (e instanceof ApiError) setText($("log-status"), `Logs of ${plugin}: ${errorText(e)}`);
    } finally { logTicking = false; }
  }

  async function logLoop(gen) {
    while (gen === S.gen) {
      if ($("log-follow").checked && !document.hidden) await logTick();
      await sleep(LOG_POLL_MS);
    }
  }

  $("log-download").addEventListener("click", () => {
    const lines = S.logs.lines.filter(logVisible).map((l) => `${l.at} ${l.line}`);
    const blob = new Blob([lines.join("\n") + (lines.length ? "\n" : "")], { type: "text/plain" });
    const a = h("a", { href: URL.createObjectURL(blob), download: `${S.logs.plugin || "plugin"}-logs.txt` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  });

  // ------------------------------------------------------------------ start

  $("sign-in-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    signedIn();
  });
  $("sign-out").addEventListener("click", () => signOut(""));

  if (token()) signedIn();
  else if (channel) {
    channel.postMessage({ type: "ask" });
    setTimeout(() => { if (!token()) $("token").focus(); }, 150);
  } else $("token").focus();
})();
