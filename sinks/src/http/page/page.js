"use strict";
// Polls /api/status once a second and redraws; the picture reloads when a new frame is shown.
(function () {
  const token = new URLSearchParams(location.search).get("access_token");
  const q = token ? "access_token=" + encodeURIComponent(token) : "";
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  };
  let lastSeq = -1;

  function bars(top) {
    const ul = $("top");
    ul.replaceChildren(...top.map((t) => {
      const li = el("li");
      li.append(el("span", t.label, "name"));
      const bar = el("span", undefined, "bar");
      const fill = el("i");
      fill.style.width = Math.max(0, Math.min(100, t.score * 100)).toFixed(1) + "%";
      bar.append(fill);
      li.append(bar, el("span", t.score.toFixed(3), "v"));
      return li;
    }));
  }

  function plot(e2e, enc) {
    const c = $("plot");
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 600, h = c.clientHeight || 180;
    c.width = w * dpr; c.height = h * dpr;
    const g = c.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    if (e2e.length === 0) return;
    const max = Math.max(1, ...e2e, ...enc) * 1.1;
    g.strokeStyle = "#2a3240"; g.fillStyle = "#8b95a5"; g.font = "11px sans-serif";
    for (let i = 0; i <= 4; i++) {
      const y = h - 16 - (h - 24) * i / 4;
      g.beginPath(); g.moveTo(36, y); g.lineTo(w, y); g.stroke();
      g.fillText((max * i / 4).toFixed(max < 10 ? 1 : 0), 2, y + 4);
    }
    const line = (data, color) => {
      g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
      data.forEach((v, i) => {
        const x = 36 + (w - 40) * (data.length === 1 ? 1 : i / (data.length - 1));
        const y = h - 16 - (h - 24) * v / max;
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    };
    line(enc, "#f5a623");
    line(e2e, "#4fb3ff");
  }

  function render(s) {
    const hl = $("health");
    hl.dataset.ok = String(s.health.ok);
    hl.textContent = s.health.reason;
    const top = s.top[0];
    const tl = $("top-label");
    tl.textContent = top ? top.label : "…";
    tl.dataset.state = top ? "live" : "waiting";
    const name = s.frame.source.split("/").pop();
    $("frame-name").textContent = "#" + s.frame.seq + (name ? " " + name : "");
    bars(s.top);
    $("heads").textContent = "CLIP head: " + s.heads.clip + (s.heads.qformer ? " · Q-Former head: " + s.heads.qformer : "");
    $("window").textContent = s.latency.window;
    plot(s.latency.recent_end_to_end_ms, s.latency.recent_encoder_ms);
    $("stages").tBodies[0].replaceChildren(...s.latency.stages.map((name, i) => {
      const tr = el("tr");
      tr.append(el("td", name), el("td", s.latency.p50_ms[i].toFixed(2)), el("td", s.latency.p99_ms[i].toFixed(2)));
      return tr;
    }));
    const run = [
      ["model", s.model + " (" + s.precision + ")"], ["device", s.backend], ["source", s.source],
      ...(s.roi ? [["region", s.roi]] : []),
      ["fps", s.fps.toFixed(1)], ["frames", s.frames], ["not classified", s.skipped],
      ["events", s.events], ["uptime", Math.round(s.uptime_s) + " s"], ["edgefuse", s.version],
    ];
    if (s.backend_fallbacks) run.push(["FALLBACK", "the primary backend failed; the models run on the CPU now"]);
    if (s.board.power_mode) run.push(["power mode", s.board.power_mode]);
    for (const z of s.board.zones) run.push([z.name, z.celsius.toFixed(1) + " °C"]);
    if (s.board.throttling.length) run.push(["THROTTLING", s.board.throttling.join(", ") + " at the trip point: inference slows down"]);
    $("run").replaceChildren(...run.flatMap(([k, v]) => [el("dt", k), el("dd", String(v))]));
    $("events").replaceChildren(...s.recent_events.slice().reverse().map((e) => {
      let what = e.kind;
      if (e.kind === "fire" && e.event) what = "fire " + e.event.label + " (" + e.event.score.toFixed(3) + ")";
      if (e.kind === "fire" && e.released.length) what += ", release " + e.released.join(", ");
      if (e.kind === "release") what = "release " + e.released.join(", ");
      if (e.kind === "camera_offline") what = "camera offline: " + e.reason;
      if (e.kind === "camera_online") what = "camera back online";
      return el("li", new Date(e.time_unix_ms).toLocaleTimeString() + " " + what +
        (e.frame !== undefined ? " · frame " + e.frame : ""));
    }));
    if (s.frames > 0 && s.frame.seq !== lastSeq) {
      lastSeq = s.frame.seq;
      $("snapshot").src = "snapshot.jpg?seq=" + s.frame.seq + (q ? "&" + q : "");
    }
  }

  async function poll() {
    try {
      const r = await fetch("api/status" + (q ? "?" + q : ""), { headers, cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      render(await r.json());
    } catch (e) {
      const hl = $("health");
      hl.dataset.ok = "false";
      hl.textContent = "no answer from edgefuse (" + e.message + ")";
    }
    setTimeout(poll, 1000);
  }
  poll();
})();
