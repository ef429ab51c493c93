// spindle web player: plain modern JavaScript, no build step, no framework.
//
// Routing is on the URL fragment (#/track/ID, #/genre/KEY, ...), so the
// server only ever serves "/" and /assets/*. Every piece of data from the
// API reaches the page through textContent or attribute setters (the el()
// helper below); innerHTML is never used, so titles such as
// "<img onerror=...>" are shown, not run.
"use strict";

const QUALITIES = ["low", "normal", "high", "original"];
const PLAY_REPORT_MS = 30000;
const SEARCH_DEBOUNCE_MS = 200;
const POLL_INTERVAL_MS = 1500;
const POLL_LIMIT_MS = 60 * 60 * 1000;
const store = {
  get(key, fallback) {
    try { return localStorage.getItem("spindle." + key) ?? fallback; } catch { return fallback; }
  },
  set(key, value) {
    try { localStorage.setItem("spindle." + key, value); } catch { /* private mode: not kept */ }
  },
};

// ---------- DOM helpers ----------

/** Creates an element. attrs: plain attributes, except "on*" (listeners),
 *  "class" and "dataset"; children: nodes or strings (as text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const $ = (sel) => document.querySelector(sel);
const main = () => $("#main");

function setView(title, ...nodes) {
  const m = main();
  // Views pass optional parts as null and groups as arrays: drop the
  // former and flatten the latter (replaceChildren would print both).
  m.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
  document.title = title ? `${title} · spindle` : "spindle";
  for (const a of document.querySelectorAll(".top nav a")) {
    const here = location.hash.startsWith(a.getAttribute("href")) && a.getAttribute("href") !== "#/"
      || (a.getAttribute("href") === "#/" && (location.hash === "" || location.hash === "#/" || location.hash.startsWith("#/genre/")));
    if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

function message(text, cls) {
  return el("p", { class: cls || "muted" }, text);
}

function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return "";
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}

function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, code, msg) { super(msg); this.status = status; this.code = code; }
}

async function api(path, options) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  if (!r.ok) {
    const e = body && body.error ? body.error : {};
    throw new ApiError(r.status, e.code || String(r.status), e.message || `HTTP ${r.status}`);
  }
  return body;
}

function errorView(e) {
  if (e instanceof ApiError && e.status === 404) return message("Not found.", "error");
  return message(`Could not load this page: ${e.message}`, "error");
}

// Track summaries seen in listings, by id: they carry artist and album ids
// that the track record itself does not.
const summaries = new Map();

// Reads the fields of a track record defensively: the transcoder adds
// duration, loudness and cover art once it has run.
const trackInfo = {
  title: (t) => t.title || (t.tags && t.tags.title) || t.filename || t.id,
  artist(t) {
    if (t.artist) return t.artist;
    if (Array.isArray(t.artists)) return t.artists.map((a) => a.name || a).join("; ");
    if (t.tags && Array.isArray(t.tags.artists)) return t.tags.artists.join("; ");
    return "";
  },
  durationMs(t) {
    const v = t.duration_ms ?? (t.media && t.media.duration_ms) ?? (t.probe && t.probe.duration_ms);
    return Number.isFinite(v) ? v : null;
  },
  gainDb(t) {
    const v = t.gain_db ?? (t.loudness && t.loudness.gain_db);
    return Number.isFinite(v) ? v : 0;
  },
  coverUrl(t) {
    const u = t.urls || {};
    if (typeof u.cover === "string") return u.cover;
    if (u.cover && typeof u.cover.blob === "string") return u.cover.blob;
    const c = t.cover || t.cover_art;
    if (c && typeof c.blob_id === "string") return `/v1/blobs/${encodeURIComponent(c.blob_id)}`;
    return null;
  },
  /** The URL to stream `quality` from and the quality actually used:
   *  original while the wanted tier is not ready. */
  streamUrl(t, quality) {
    const u = t.urls || {};
    const tiers = t.tiers || {};
    let q = quality;
    if (q !== "original" && !tiers[q] && !u[q]) q = "original";
    const entry = u[q];
    if (entry && typeof entry.blob === "string") return { url: entry.blob, quality: q };
    return { url: `/v1/tracks/${encodeURIComponent(t.id)}/stream?quality=${q}`, quality: q };
  },
};

// ---------- player ----------

const player = {
  audio: null,
  track: null,
  ctx: null,
  gainNode: null,
  session: null, // { trackId, startedAt, playedMs, lastTime, reported }

  init() {
    this.audio = $("#audio");
    const a = this.audio;
    const qs = $("#quality");
    qs.value = QUALITIES.includes(store.get("quality", "normal")) ? store.get("quality", "normal") : "normal";
    qs.addEventListener("change", () => {
      store.set("quality", qs.value);
      if (this.track) this.load(this.track, { keepPosition: true, autoplay: !a.paused });
    });
    $("#play-toggle").addEventListener("click", () => this.toggle());
    a.addEventListener("play", () => this.updateButton());
    a.addEventListener("pause", () => this.updateButton());
    a.addEventListener("ended", () => { this.updateButton(); this.accumulate(true); });
    a.addEventListener("timeupdate", () => this.accumulate(false));
    a.addEventListener("seeking", () => { if (this.session) this.session.lastTime = null; });
    a.addEventListener("error", () => {
      const err = a.error;
      $("#tier-note").textContent = err ? `Playback error (${err.code})` : "Playback error";
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.code !== "Space" && ev.key !== " ") return;
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const t = ev.target;
      const tag = t && t.tagName;
      if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || tag === "BUTTON" || tag === "AUDIO"
        || (t && t.isContentEditable)) return;
      if (!this.track) return;
      ev.preventDefault();
      this.toggle();
    });
  },

  /** Routes the element through a GainNode so each track plays at its
   *  normalised loudness. Created on first play (browsers want a gesture). */
  ensureGraph() {
    if (this.ctx || !window.AudioContext) return;
    try {
      this.ctx = new AudioContext();
      const src = this.ctx.createMediaElementSource(this.audio);
      this.gainNode = this.ctx.createGain();
      src.connect(this.gainNode).connect(this.ctx.destination);
    } catch (e) {
      console.warn("Web Audio unavailable; playing without loudness normalisation", e);
      this.ctx = null;
      this.gainNode = null;
    }
  },

  applyGain() {
    if (!this.gainNode || !this.track) return;
    // Bounded so a bogus value can neither blast nor silence the output.
    const db = Math.max(-24, Math.min(12, trackInfo.gainDb(this.track)));
    this.gainNode.gain.value = Math.pow(10, db / 20);
  },

  updateButton() {
    const b = $("#play-toggle");
    const playing = !this.audio.paused;
    b.textContent = playing ? "\u275A\u275A" : "\u25B6";
    b.setAttribute("aria-label", playing ? "Pause" : "Play");
    b.disabled = !this.track;
  },

  load(track, { keepPosition = false, autoplay = true } = {}) {
    const a = this.audio;
    const sameTrack = this.track && this.track.id === track.id;
    const position = keepPosition && sameTrack ? a.currentTime : 0;
    if (!sameTrack) this.session = null;
    this.track = track;
    const wanted = $("#quality").value;
    const { url, quality } = trackInfo.streamUrl(track, wanted);
    $("#tier-note").textContent = quality !== wanted ? `${wanted} not ready: playing original` : "";
    a.src = url;
    a.dataset.quality = quality;
    if (position > 0) {
      a.addEventListener("loadedmetadata", () => { a.currentTime = position; }, { once: true });
    }
    const title = $("#now-title");
    title.textContent = trackInfo.title(track);
    title.setAttribute("href", `#/track/${encodeURIComponent(track.id)}`);
    $("#now-detail").textContent = trackInfo.artist(track);
    const cover = trackInfo.coverUrl(track);
    const img = $("#now-cover");
    if (cover) { img.src = cover; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
    this.updateButton();
    if (autoplay) this.play();
  },

  async play() {
    this.ensureGraph();
    this.applyGain();
    if (this.ctx && this.ctx.state === "suspended") {
      try { await this.ctx.resume(); } catch { /* resumed by the next gesture */ }
    }
    try {
      await this.audio.play();
    } catch (e) {
      if (e.name !== "AbortError") $("#tier-note").textContent = `Cannot play: ${e.message}`;
    }
  },

  toggle() {
    if (!this.track) return;
    if (this.audio.paused) this.play(); else this.audio.pause();
  },

  /** Counts wall-clock playback (seeks excluded) and reports the play once
   *  30 s were played, or the whole track if it is shorter. */
  accumulate(ended) {
    const a = this.audio;
    if (!this.track) return;
    if (!this.session || this.session.trackId !== this.track.id) {
      if (a.paused && !ended) return;
      this.session = { trackId: this.track.id, startedAt: Date.now(), playedMs: 0, lastTime: a.currentTime, reported: false };
      return;
    }
    const s = this.session;
    const now = a.currentTime;
    if (s.lastTime !== null) {
      const delta = now - s.lastTime;
      // timeupdate fires every ~250 ms; a larger jump is a seek, not play.
      if (delta > 0 && delta < 2) s.playedMs += delta * 1000;
    }
    s.lastTime = now;
    if (s.reported) {
      if (ended) this.session = null; // a replay is a new play
      return;
    }
    const durationMs = trackInfo.durationMs(this.track) ?? (Number.isFinite(a.duration) ? a.duration * 1000 : null);
    const threshold = durationMs ? Math.min(PLAY_REPORT_MS, durationMs * 0.98) : PLAY_REPORT_MS;
    if (s.playedMs >= threshold || (ended && durationMs && durationMs < PLAY_REPORT_MS)) {
      s.reported = true;
      this.report(s.trackId, Math.round(Math.max(s.playedMs, ended && durationMs ? durationMs : 0)), s.startedAt);
      if (ended) this.session = null;
    }
  },

  async report(trackId, msPlayed, startedAt) {
    const event = { listener_id: listenerId(), track_id: trackId, ms_played: msPlayed, started_at: startedAt };
    try {
      const r = await api("/v1/plays", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(event),
      });
      document.body.dataset.lastPlayReport = JSON.stringify(r && r.results ? r.results[0] : r);
    } catch (e) {
      console.warn("play report failed", e);
      document.body.dataset.lastPlayReport = `error: ${e.message}`;
    }
  },
};

function listenerId() {
  let id = store.get("listener", null);
  if (!id) {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    store.set("listener", id);
  }
  return id;
}

async function playTrackId(id) {
  try {
    const t = await api(`/v1/tracks/${encodeURIComponent(id)}`);
    player.load(t);
  } catch (e) {
    $("#tier-note").textContent = `Cannot play: ${e.message}`;
  }
}

// ---------- shared views ----------

function playButton(id, title) {
  return el("button", {
    type: "button", class: "icon", "aria-label": `Play ${title}`, title: "Play",
    onclick: () => playTrackId(id),
  }, "\u25B6");
}

function artistLinks(artists) {
  const out = [];
  (artists || []).forEach((a, i) => {
    if (i) out.push(", ");
    out.push(a.id ? el("a", { href: `#/artist/${encodeURIComponent(a.id)}` }, a.name) : a.name);
  });
  return out;
}

/** One row per track summary; `lead` gives the first column (a rank). */
function trackList(items, { lead, extra } = {}) {
  const ul = el("ul", { class: lead ? "tracks" : "tracks plain" });
  for (const [i, t] of items.entries()) {
    if (t.id) summaries.set(t.id, t);
    const title = t.title || t.id;
    const sub = [];
    if (t.artists && t.artists.length) sub.push(...artistLinks(t.artists));
    else if (typeof t.artist === "string" && t.artist) sub.push(t.artist);
    if (t.album && t.album.id) {
      if (sub.length) sub.push(" · ");
      sub.push(el("a", { href: `#/album/${encodeURIComponent(t.album.id)}` }, t.album.name));
    }
    ul.append(el("li", { class: "track-row" },
      lead ? lead(t, i) : null,
      playButton(t.id || t.track_id, title),
      el("div", { class: "main" },
        el("a", { class: "title", href: `#/track/${encodeURIComponent(t.id || t.track_id)}` }, title),
        el("span", { class: "sub" }, sub)),
      el("span", { class: "extra" }, extra ? extra(t) : t.kind && t.kind !== "song" ? t.kind : "")));
  }
  return ul;
}

/** A "More" button that fetches the next page and appends it. */
function moreButton(nextCursor, fetchPage, appendTo) {
  if (!nextCursor) return null;
  const b = el("button", { type: "button", class: "more" }, "More");
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      const page = await fetchPage(nextCursor);
      appendTo(page.items || []);
      const next = moreButton(page.next_cursor, fetchPage, appendTo);
      b.replaceWith(next || "");
    } catch (e) {
      b.disabled = false;
      b.after(message(e.message, "error"));
    }
  });
  return b;
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : "";
}

// ---------- pages ----------

async function homeView() {
  setView("Genres", el("h1", {}, "Genres"), message("Loading…"));
  const page = await api("/v1/genres?limit=200");
  const grid = el("ul", { class: "grid" });
  const add = (items) => {
    for (const g of items) {
      grid.append(el("li", {}, el("a", { class: "card", href: `#/genre/${encodeURIComponent(g.key)}` },
        g.name, el("span", { class: "count" }, `${g.track_count} track${g.track_count === 1 ? "" : "s"}`))));
    }
  };
  add(page.items || []);
  const nodes = [el("h1", {}, "Genres")];
  if (!(page.items || []).length) {
    nodes.push(message("No genres yet. Tracks appear here once they are uploaded and transcoded."),
      el("p", {}, el("a", { href: "#/upload" }, "Upload music")));
  }
  nodes.push(grid, moreButton(page.next_cursor, (c) => api(`/v1/genres${qs({ limit: 200, cursor: c })}`), add));
  setView("Genres", ...nodes);
}

async function genreView(key) {
  setView(key, el("h1", {}, key), message("Loading…"));
  const path = `/v1/genres/${encodeURIComponent(key)}/tracks`;
  const page = await api(path);
  const items = page.items || [];
  const shown = (items[0] && items[0].genres) || [];
  const name = shown.find((g) => g.toLowerCase() === key.toLowerCase()) || shown[0] || key;
  const list = trackList(items);
  setView(name,
    el("h1", {}, name),
    el("div", { class: "toolbar" }, el("a", { class: "button", href: `#/charts${qs({ genre: key })}` }, `Top 50 in ${name}`)),
    items.length ? list : message("No ready tracks in this genre."),
    moreButton(page.next_cursor, (c) => api(path + qs({ cursor: c })), (more) => {
      list.append(...trackList(more).children);
    }));
}

async function artistsView() {
  setView("Artists", el("h1", {}, "Artists"), message("Loading…"));
  const page = await api("/v1/artists?limit=200");
  const grid = el("ul", { class: "grid" });
  const add = (items) => {
    for (const a of items) grid.append(el("li", {}, el("a", { class: "card", href: `#/artist/${encodeURIComponent(a.id)}` }, a.name)));
  };
  add(page.items || []);
  setView("Artists", el("h1", {}, "Artists"),
    (page.items || []).length ? grid : message("No artists yet."),
    moreButton(page.next_cursor, (c) => api(`/v1/artists${qs({ limit: 200, cursor: c })}`), add));
}

async function artistView(id) {
  setView("Artist", message("Loading…"));
  const path = `/v1/artists/${encodeURIComponent(id)}`;
  const a = await api(path);
  const albums = el("ul", { class: "grid" });
  for (const al of a.albums || []) {
    albums.append(el("li", {}, el("a", { class: "card", href: `#/album/${encodeURIComponent(al.id)}` }, al.name)));
  }
  const tracks = (a.tracks && a.tracks.items) || [];
  const list = trackList(tracks);
  setView(a.name,
    el("h1", {}, a.name),
    (a.albums || []).length ? [el("h2", {}, "Albums"), albums] : null,
    el("h2", {}, "Tracks"), list,
    moreButton(a.tracks && a.tracks.next_cursor, async (c) => (await api(path + qs({ cursor: c }))).tracks,
      (items) => list.append(...trackList(items).children)));
}

async function albumView(id) {
  setView("Album", message("Loading…"));
  const path = `/v1/albums/${encodeURIComponent(id)}`;
  const al = await api(path);
  const tracks = (al.tracks && al.tracks.items) || [];
  const list = trackList(tracks, { lead: (_t, i) => el("span", { class: "rank" }, String(i + 1)) });
  setView(al.name,
    el("h1", {}, al.name),
    al.artist ? el("p", {}, "by ", artistLinks([al.artist])) : null,
    list,
    moreButton(al.tracks && al.tracks.next_cursor, async (c) => (await api(path + qs({ cursor: c }))).tracks,
      (items) => list.append(...trackList(items).children)));
}

let trackPoll = null;

async function trackView(id) {
  setView("Track", message("Loading…"));
  const t = await api(`/v1/tracks/${encodeURIComponent(id)}`);
  renderTrack(t);
  if (t.status === "processing") {
    const started = Date.now();
    const routeAtStart = location.hash;
    trackPoll = setInterval(async () => {
      if (location.hash !== routeAtStart || Date.now() - started > POLL_LIMIT_MS) { clearInterval(trackPoll); return; }
      try {
        const next = await api(`/v1/tracks/${encodeURIComponent(id)}`);
        if (next.status !== "processing") { clearInterval(trackPoll); renderTrack(next); }
      } catch { /* keep polling */ }
    }, POLL_INTERVAL_MS * 2);
  }
}

function renderTrack(t) {
  const title = trackInfo.title(t);
  const summary = summaries.get(t.id);
  const cover = trackInfo.coverUrl(t);
  const duration = trackInfo.durationMs(t);
  const facts = el("dl", { class: "facts" });
  const fact = (k, ...v) => facts.append(el("dt", {}, k), el("dd", {}, ...v));
  if (summary && summary.artists && summary.artists.length) fact("Artist", artistLinks(summary.artists));
  else if (trackInfo.artist(t)) fact("Artist", el("a", { href: `#/search/${encodeURIComponent(trackInfo.artist(t))}` }, trackInfo.artist(t)));
  if (summary && summary.album && summary.album.id) fact("Album", el("a", { href: `#/album/${encodeURIComponent(summary.album.id)}` }, summary.album.name));
  else if (t.album || (t.tags && t.tags.album)) fact("Album", t.album || t.tags.album);
  const genreText = t.genre || (t.tags && Array.isArray(t.tags.genres) ? t.tags.genres.join(";") : "");
  if (genreText) {
    const parts = String(genreText).split(";").map((s) => s.trim()).filter(Boolean);
    const links = [];
    parts.forEach((g, i) => { if (i) links.push(", "); links.push(el("a", { href: `#/genre/${encodeURIComponent(g)}` }, g)); });
    fact("Genre", links);
  }
  fact("Kind", t.kind || "song");
  fact("Duration", duration !== null ? formatDuration(duration) : "unknown until transcoded");
  fact("Status", el("span", { class: `status ${t.status}`, id: "track-status" }, t.status));
  if (t.failure_reason) fact("Failure", el("span", { class: "error" }, t.failure_reason));
  const tiers = t.tiers || {};
  const tierText = ["low", "normal", "high"].filter((q) => tiers[q])
    .map((q) => `${q}${tiers[q].bitrate_kbps ? ` ${tiers[q].bitrate_kbps} kbps` : ""}`);
  fact("Tiers", tierText.length ? tierText.join(", ") : "none yet (original only)");
  if (t.raw) fact("Original", `${t.raw.media_type || ""} ${formatBytes(t.raw.size_bytes)}`.trim());
  const gain = trackInfo.gainDb(t);
  if (gain) fact("Loudness gain", `${gain > 0 ? "+" : ""}${gain.toFixed(1)} dB`);
  const art = cover
    ? el("img", { class: "cover", src: cover, alt: `Cover of ${title}` })
    : el("div", { class: "cover placeholder", "aria-hidden": "true" }, "\u266A");
  // A failed track's original is what could not be decoded: nothing to play.
  const canPlay = t.status !== "failed";
  setView(title,
    el("article", { class: "track-page" }, art,
      el("div", {},
        el("h1", {}, title),
        el("div", { class: "toolbar" },
          canPlay ? el("button", { type: "button", class: "primary", id: "track-play", onclick: () => player.load(t) }, "\u25B6 Play") : null),
        facts)));
}

async function chartsView(params) {
  const genre = params.get("genre") || "";
  const windowName = ["day", "week", "all"].includes(params.get("window")) ? params.get("window") : "week";
  const kind = ["song", "podcast", "story"].includes(params.get("kind")) ? params.get("kind") : "";
  setView("Top 50", el("h1", {}, "Top 50"), message("Loading…"));
  const [chart, genres] = await Promise.all([
    api(`/v1/charts/top${qs({ genre, window: windowName, kind, limit: 50 })}`),
    api("/v1/genres?limit=200").catch(() => ({ items: [] })),
  ]);
  const nav = (changes) => {
    const p = new URLSearchParams({ genre, window: windowName, kind, ...changes });
    for (const [k, v] of [...p.entries()]) if (!v) p.delete(k);
    location.hash = `#/charts?${p}`;
  };
  const genreSel = el("select", { id: "chart-genre", onchange: (e) => nav({ genre: e.target.value }) },
    el("option", { value: "" }, "All genres"),
    (genres.items || []).map((g) => el("option", { value: g.key, selected: g.key === genre }, g.name)));
  const windowSel = el("select", { id: "chart-window", onchange: (e) => nav({ window: e.target.value }) },
    [["day", "Today"], ["week", "This week"], ["all", "All time"]].map(([v, l]) => el("option", { value: v, selected: v === windowName }, l)));
  const kindSel = el("select", { id: "chart-kind", onchange: (e) => nav({ kind: e.target.value }) },
    [["", "All kinds"], ["song", "Songs"], ["podcast", "Podcasts"], ["story", "Stories"]].map(([v, l]) => el("option", { value: v, selected: v === kind }, l)));
  const entries = (chart.entries || []).map((e) => ({ ...e, id: e.track_id, title: e.title || e.track_id }));
  const changeCell = (e) => {
    const c = String(e.change || "");
    let cls = "same", text = "\u2013", label = "no change";
    if (c === "new") { cls = "new"; text = "new"; label = "new entry"; }
    else if (c.startsWith("up")) { cls = "up"; text = `\u25B2${c.slice(3)}`; label = c; }
    else if (c.startsWith("down")) { cls = "down"; text = `\u25BC${c.slice(5)}`; label = c; }
    return el("span", { class: `change ${cls}`, "aria-label": label }, text);
  };
  const heading = `Top 50${chart.genre ? ` · ${chart.genre}` : ""}`;
  setView(heading,
    el("h1", {}, heading),
    el("div", { class: "toolbar" },
      el("label", { for: "chart-genre" }, "Genre"), genreSel,
      el("label", { for: "chart-window" }, "Window"), windowSel,
      el("label", { for: "chart-kind" }, "Kind"), kindSel),
    entries.length
      ? trackList(entries, {
        lead: (e) => el("span", { class: "rank" }, String(e.rank), changeCell(e)),
        extra: (e) => `${e.streams} stream${e.streams === 1 ? "" : "s"}`,
      })
      : message("No plays counted in this window yet."),
    chart.computed_at ? el("p", { class: "muted" }, `Computed ${chart.computed_at}`) : null);
}

let searchSeq = 0;

async function searchView(q) {
  const input = $("#search");
  if (document.activeElement !== input && input.value !== q) input.value = q;
  if (!q.trim()) { setView("Search", el("h1", {}, "Search"), message("Type to search tracks, artists and albums.")); return; }
  const seq = ++searchSeq;
  const r = await api(`/v1/search${qs({ q, limit: 20 })}`);
  if (seq !== searchSeq) return; // a newer query answered first
  const tracks = (r.tracks || []).map((h) => ({ ...(h.item || {}), id: h.id || (h.item && h.item.id) }));
  const artists = (r.artists || []).map((h) => ({ ...(h.item || {}), id: h.id || (h.item && h.item.id) }));
  const albums = (r.albums || []).map((h) => ({ ...(h.item || {}), id: h.id || (h.item && h.item.id) }));
  const nodes = [el("h1", {}, "Results for \u201C", q, "\u201D")];
  if (!tracks.length && !artists.length && !albums.length) nodes.push(message("Nothing found."));
  if (tracks.length) nodes.push(el("h2", {}, "Tracks"), el("div", { id: "search-tracks" }, trackList(tracks)));
  if (artists.length) {
    nodes.push(el("h2", {}, "Artists"), el("ul", { class: "grid" },
      artists.map((a) => el("li", {}, el("a", { class: "card", href: `#/artist/${encodeURIComponent(a.id)}` }, a.name || a.id)))));
  }
  if (albums.length) {
    nodes.push(el("h2", {}, "Albums"), el("ul", { class: "grid" },
      albums.map((a) => el("li", {}, el("a", { class: "card", href: `#/album/${encodeURIComponent(a.id)}` },
        a.name || a.id, a.artist ? el("span", { class: "count" }, a.artist.name) : null)))));
  }
  setView(`Search: ${q}`, ...nodes);
}

// ---------- upload ----------

const uploads = { queue: [], running: 0, list: null };
const UPLOADS_AT_ONCE = 2;

function uploadView() {
  const token = el("input", { id: "token", type: "password", autocomplete: "off", value: store.get("token", ""), placeholder: "creator token" });
  const saved = el("span", { class: "muted", role: "status" }, store.get("token", "") ? "Token saved in this browser." : "");
  const saveToken = el("button", {
    type: "button", onclick: async () => {
      const t = token.value.trim();
      store.set("token", t);
      if (!t) { saved.textContent = "Token cleared."; return; }
      // Ask the server whether it takes this token (a lookup by an id no
      // track has): 200 for a creator or admin token, 401/403 otherwise.
      saved.textContent = "Checking the token…";
      try {
        await api(`/v1/tracks${qs({ raw: "0".repeat(64) })}`, { headers: { Accept: "application/json", Authorization: `Bearer ${t}` } });
        saved.textContent = "Token accepted and saved in this browser.";
      } catch (e) {
        saved.textContent = e instanceof ApiError && (e.status === 401 || e.status === 403)
          ? "The server does not accept this token (saved anyway; check tokens.toml)."
          : `Saved; could not check it: ${e.message}`;
      }
    },
  }, "Save token");
  // Default: let the server decide (a file tagged "Podcast" is a podcast).
  const kind = el("select", { id: "upload-kind" },
    el("option", { value: "" }, "from the file (song unless tagged Podcast)"),
    ["song", "podcast", "story"].map((k) => el("option", { value: k }, k)));
  const genre = el("input", { id: "upload-genre", type: "text", placeholder: "from the file's tags" });
  const files = el("input", { id: "upload-files", type: "file", multiple: true, accept: "audio/*,.flac,.mp3,.ogg,.opus,.m4a,.wav,.aif,.aiff", class: "visually-hidden" });
  const zone = el("label", { class: "dropzone", for: "upload-files" },
    files, el("strong", {}, "Drop audio files here"), el("br"), el("span", { class: "muted" }, "or press to choose files"));
  const start = (list) => {
    for (const f of list) enqueueUpload(f, { kind: kind.value, genre: genre.value.trim() });
  };
  files.addEventListener("change", () => { start([...files.files]); files.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    start([...(e.dataTransfer ? e.dataTransfer.files : [])]);
  });
  if (!uploads.list) uploads.list = el("ul", { class: "uploads", id: "uploads" });
  setView("Upload",
    el("h1", {}, "Upload"),
    el("p", { class: "muted" }, "The creator token is in the token file that ", el("code", {}, "spindle serve"), " printed on first start (tokens.toml in the data directory)."),
    el("div", { class: "row" },
      el("div", { class: "field" }, el("label", { for: "token" }, "Creator token"), token),
      saveToken, saved),
    el("div", { class: "row" },
      el("div", { class: "field" }, el("label", { for: "upload-kind" }, "Kind"), kind),
      el("div", { class: "field" }, el("label", { for: "upload-genre" }, "Genre (optional)"), genre)),
    zone,
    uploads.list);
}

function enqueueUpload(file, fields) {
  const progress = el("progress", { max: "100", value: "0", "aria-label": `Upload of ${file.name}` });
  const status = el("span", { class: "muted", role: "status" }, "waiting");
  const link = el("span");
  const item = el("li", {}, el("div", { class: "name" }, file.name, " ", el("span", { class: "muted" }, formatBytes(file.size))), progress, status, " ", link);
  uploads.list.prepend(item);
  uploads.queue.push({ file, fields, progress, status, link });
  pumpUploads();
}

function pumpUploads() {
  while (uploads.running < UPLOADS_AT_ONCE && uploads.queue.length) {
    const job = uploads.queue.shift();
    uploads.running++;
    runUpload(job).finally(() => { uploads.running--; pumpUploads(); });
  }
}

function runUpload({ file, fields, progress, status, link }) {
  return new Promise((resolve) => {
    const token = store.get("token", "");
    if (!token) { status.textContent = "no creator token: paste it above and save"; status.className = "error"; resolve(); return; }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/tracks${qs({ filename: file.name, kind: fields.kind, genre: fields.genre })}`);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    if (file.type) xhr.setRequestHeader("Content-Type", file.type);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        progress.value = Math.floor((e.loaded / e.total) * 100);
        status.textContent = `uploading ${formatBytes(e.loaded)} of ${formatBytes(e.total)}`;
      }
    });
    xhr.addEventListener("error", () => { status.textContent = "upload interrupted (connection lost)"; status.className = "error"; resolve(); });
    xhr.addEventListener("abort", () => { status.textContent = "upload aborted"; status.className = "error"; resolve(); });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status < 200 || xhr.status > 299) {
        const msg = body && body.error ? body.error.message : xhr.statusText;
        status.textContent = `upload refused (${xhr.status}): ${msg}`;
        status.className = "error";
        resolve();
        return;
      }
      progress.value = 100;
      const id = body && body.id;
      link.replaceChildren(el("a", { href: `#/track/${encodeURIComponent(id)}` }, "open track"));
      pollStatus(id, status).then(resolve);
    });
    status.textContent = "uploading";
    xhr.send(file);
  });
}

async function pollStatus(id, status) {
  const started = Date.now();
  status.className = "status processing";
  status.textContent = "processing";
  while (Date.now() - started < POLL_LIMIT_MS) {
    await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS));
    try {
      const t = await api(`/v1/tracks/${encodeURIComponent(id)}`);
      if (t.status === "ready") { status.className = "status ready"; status.textContent = "ready"; return; }
      if (t.status === "failed") {
        status.className = "error";
        status.textContent = `failed: ${t.failure_reason || "no reason given"}`;
        return;
      }
    } catch (e) {
      status.textContent = `processing (status check failed: ${e.message})`;
    }
  }
  status.textContent = "still processing; check the track page later";
}

// ---------- router ----------

async function route() {
  if (trackPoll) { clearInterval(trackPoll); trackPoll = null; }
  const hash = decodeURIComponentSafe(location.hash.replace(/^#/, "")) || "/";
  const [pathPart, query = ""] = hash.split("?");
  const parts = pathPart.split("/").filter(Boolean);
  const params = new URLSearchParams(query);
  try {
    switch (parts[0]) {
      case undefined: await homeView(); break;
      case "genre": await genreView(parts.slice(1).join("/")); break;
      case "artists": await artistsView(); break;
      case "artist": await artistView(parts[1] || ""); break;
      case "album": await albumView(parts[1] || ""); break;
      case "track": await trackView(parts[1] || ""); break;
      case "charts": await chartsView(params); break;
      case "search": await searchView(parts.slice(1).join("/")); break;
      case "upload": uploadView(); break;
      default: setView("Not found", el("h1", {}, "Not found"), el("p", {}, el("a", { href: "#/" }, "Back to genres")));
    }
  } catch (e) {
    setView("Error", errorView(e));
  }
}

function decodeURIComponentSafe(s) {
  try { return decodeURIComponent(s); } catch { return s; }
}

function initSearch() {
  const input = $("#search");
  let timer = null;
  const go = () => {
    const q = input.value;
    const target = q.trim() ? `#/search/${encodeURIComponent(q)}` : "#/";
    // Typing replaces the history entry instead of adding one per letter.
    if (location.hash.startsWith("#/search/")) history.replaceState(null, "", target);
    else history.pushState(null, "", target);
    route();
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(go, SEARCH_DEBOUNCE_MS); });
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(timer); go(); });
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  player.init();
  initSearch();
  route();
});
