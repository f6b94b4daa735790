// The fleetmesh seed dashboard. Reads /status and /history every two
// seconds and redraws. Every value from the fleet (node ids, sites,
// reasons) is set as text, never as markup.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#2b6cb0", "#2f8f46", "#b7791f", "#c2362b", "#6b46c1", "#2c7a7b"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    // Styles through the CSSOM: the page's CSP refuses style attributes.
    if (k === "style") Object.assign(e.style, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(secs) {
  if (secs < 90) return Math.max(0, Math.round(secs)) + " s ago";
  if (secs < 5400) return Math.round(secs / 60) + " min ago";
  return Math.round(secs / 3600) + " h ago";
}

function stateName(s) {
  return typeof s === "string" ? s : Object.keys(s)[0];
}

function rows(table, list, row) {
  const body = document.querySelector(table + " tbody");
  body.replaceChildren(...list.map(row));
}

function card(value, label, id) {
  return el("div", { class: "card", id }, el("b", {}, value), el("span", {}, label));
}

function renderSummary(status) {
  const f = status.fleet;
  const versions = Object.entries(f.by_version).map(([v, n]) => n + " on " + v).join(", ") || "none";
  const states = Object.entries(f.by_state).map(([s, n]) => n + " " + s).join(", ") || "none";
  document.getElementById("summary").replaceChildren(
    card(f.nodes.length, "nodes reporting", "card-nodes"),
    card(status.peers, "peers connected", "card-peers"),
    card(f.stale, "stale", "card-stale"),
    card(status.policy_version ?? "none", "policy version", "card-policy"),
    el("div", { class: "card wide" }, el("span", {}, "versions: " + versions), el("br"), el("span", {}, "states: " + states)),
  );
}

function renderReleases(status, history) {
  const last = history.samples.length ? history.samples[history.samples.length - 1].releases : {};
  rows("#releases", status.releases, (r) => {
    const p = last[r.version];
    return el("tr", { "data-version": r.version },
      el("td", {}, r.version), el("td", {}, r.channel),
      el("td", { class: "num" }, r.chunks_total),
      el("td", { class: "num" }, p ? p.complete + " / " + p.nodes : "–"),
      el("td", { class: "num" }, bytes(r.bytes_up)),
      el("td", { class: "mono" }, r.release_id.slice(0, 16) + "…"));
  });
}

function renderRollouts(status) {
  const box = document.getElementById("rollouts");
  const list = status.fleet.rollouts;
  if (!list.length) {
    box.replaceChildren(el("p", { class: "muted" }, "no rollouts in the policy"));
    return;
  }
  box.replaceChildren(...list.map((r) => {
    const state = stateName(r.state);
    const reason = typeof r.state === "object" && r.state[state].reason ? ": " + r.state[state].reason : "";
    const div = el("div", { class: "rollout", "data-version": r.version },
      el("b", {}, r.version), " ", el("span", { class: "state-" + state }, state + reason));
    for (const w of r.waves) {
      const pct = (n) => (w.members ? (100 * n) / w.members : 0) + "%";
      const bar = el("div", { class: "bar" },
        el("div", { class: "ok", style: { width: pct(w.succeeded) } }),
        el("div", { class: "bad", style: { width: pct(w.failed) } }));
      div.append(el("div", { class: "wave" + (w.open ? "" : " closed"), "data-wave": w.name },
        el("span", {}, w.name + (w.open ? "" : " (closed)")), bar,
        el("span", {}, w.succeeded + " committed, " + w.failed + " failed of " + w.members)));
    }
    return div;
  }));
}

function renderSites(status) {
  rows("#sites", status.fleet.sites, (s) => {
    const all = s.bytes_same_site + s.bytes_wan;
    return el("tr", { "data-site": s.site },
      el("td", {}, s.site || "(none)"), el("td", { class: "num" }, s.nodes),
      el("td", { class: "num" }, bytes(s.bytes_same_site)),
      el("td", { class: "num" }, bytes(s.bytes_wan)),
      el("td", { class: "num" }, all ? Math.round((100 * s.bytes_wan) / all) + "%" : "–"));
  });
}

function renderFleet(status) {
  const now = status.updated_at;
  const nodes = [...status.fleet.nodes].sort((a, b) => (a.site + a.node_id).localeCompare(b.site + b.node_id));
  rows("#fleet", nodes, (n) => el("tr", { "data-node": n.node_id, "data-state": n.state, class: n.stale ? "stale" : "" },
    el("td", { class: "mono", title: n.node_id }, n.node_id.slice(-12)),
    el("td", {}, n.site), el("td", {}, n.version ?? "?"), el("td", {}, n.slot ?? "?"),
    el("td", { class: "state-" + n.state }, n.state), el("td", {}, n.reason ?? ""),
    el("td", {}, ago(now - n.last_report) + (n.stale ? " (stale)" : ""))));
}

function renderChart(history) {
  const chart = document.getElementById("chart");
  const [W, H, L, R, T, B] = [800, 220, 44, 12, 10, 26];
  const samples = history.samples;
  const parts = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B })];
  for (const pct of [0, 50, 100]) {
    const t = svg("text", { x: 4, y: H - B - ((H - B - T) * pct) / 100 + 4 });
    t.textContent = pct + "%";
    parts.push(t);
  }
  const legend = [];
  if (samples.length) {
    const t0 = samples[0].at;
    const span = Math.max(1, samples[samples.length - 1].at - t0);
    const x = (at) => L + ((W - L - R) * (at - t0)) / span;
    const y = (f) => H - B - (H - B - T) * f;
    const versions = [...new Set(samples.flatMap((s) => Object.keys(s.releases)))];
    versions.forEach((v, i) => {
      const color = COLORS[i % COLORS.length];
      const points = samples.filter((s) => s.releases[v] && s.releases[v].total)
        .map((s) => x(s.at).toFixed(1) + "," + y(s.releases[v].held / s.releases[v].total).toFixed(1));
      parts.push(svg("polyline", { points: points.join(" "), stroke: color, "data-version": v, "data-points": points.length }));
      legend.push(el("span", {}, el("i", { style: { background: color } }), v));
    });
    const end = svg("text", { x: W - R - 60, y: H - 6 });
    end.textContent = span + " s";
    parts.push(end);
  }
  chart.replaceChildren(...parts);
  document.getElementById("legend").replaceChildren(...legend);
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()).trim());
  return r.json();
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const [status, history] = await Promise.all([getJson("/status"), getJson("/history")]);
    document.getElementById("seed-id").textContent = status.node_id;
    renderSummary(status);
    renderChart(history);
    renderReleases(status, history);
    renderRollouts(status);
    renderSites(status);
    renderFleet(status);
    document.getElementById("updated").textContent = "updated " + new Date(status.updated_at * 1000).toLocaleTimeString();
    error.hidden = true;
  } catch (e) {
    error.textContent = "cannot read the seed: " + e.message;
    error.hidden = false;
  }
  document.body.dataset.polls = Number(document.body.dataset.polls) + 1;
  setTimeout(poll, POLL_MS);
}

poll();
