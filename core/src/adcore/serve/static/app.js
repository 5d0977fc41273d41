// The review page: score dropped images with the chosen model, show each one's heatmap overlay, score
// and verdict; the threshold slider re-labels the results here, in the page (the server is not asked again).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: {}, results: [], threshold: null };

function headers() {
  const token = $("token").value || sessionStorage.getItem("adcore-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: response.statusText, detail: null }; }
  if (response.status === 401) { $("token-box").hidden = false; }
  if (!response.ok) {
    const detail = body && body.detail;
    const text = typeof detail === "string" ? detail : detail && (detail.reason || detail.message) || JSON.stringify(detail);
    throw new Error(`${response.status} ${body.error}${text ? ": " + text : ""}`);
  }
  return body;
}

function model() { return state.models[$("model").value]; }
function calibrated() { const m = model(); return Boolean(m && m.calibrated); }
const fmt = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toPrecision(digits));

async function loadModels() {
  try {
    const body = await api("/v1/models");
    const select = $("model");
    const previous = select.value;
    select.innerHTML = "";
    for (const m of body.models) {
      state.models[m.name] = m;
      const option = new Option(m.name + (m.state ? ` (${m.state})` : ""), m.name);
      option.disabled = Boolean(m.state);
      select.add(option);
    }
    if (previous && state.models[previous]) select.value = previous;
    describeModel();
    $("status").textContent = body.models.some((m) => m.state) ? "models still loading…" : "";
    if (body.models.some((m) => m.state)) setTimeout(loadModels, 1000);
  } catch (error) {
    $("status").textContent = String(error.message || error);
  }
}

function describeModel() {
  const m = model();
  if (!m) { $("model-info").textContent = ""; return; }
  const size = m.input_size ? m.input_size.join("×") : "full resolution (tiled)";
  $("model-info").textContent = `${m.detector} · ${size} · ` + (m.calibrated ? `threshold ${fmt(m.threshold)}` : "not calibrated");
  resetThreshold();
}

function resetThreshold() {
  const slider = $("threshold");
  if (calibrated()) {
    slider.min = 0; slider.max = 1; slider.step = 0.001; slider.value = 0.5;
  } else {
    const scores = state.results.filter((r) => r.result).map((r) => r.result.score);
    const low = scores.length ? Math.min(...scores) : 0, high = scores.length ? Math.max(...scores) : 1;
    slider.min = low; slider.max = high > low ? high : low + 1; slider.step = (slider.max - slider.min) / 1000;
    slider.value = (Number(slider.min) + Number(slider.max)) / 2;
  }
  relabel();
}

// raw threshold equivalent to normalised t: threshold + scale * logit(t)
function rawFor(t) {
  const m = model();
  const clipped = Math.min(Math.max(t, 1e-6), 1 - 1e-6);
  return m.threshold + m.score_scale * Math.log(clipped / (1 - clipped));
}

function relabel() {
  const t = Number($("threshold").value);
  $("threshold-value").textContent = calibrated() ? `${t.toFixed(3)} normalised (raw ${fmt(rawFor(t))})` : `raw ${fmt(t)}`;
  let flagged = 0, scored = 0;
  for (const entry of state.results) {
    if (!entry.result) continue;
    scored += 1;
    const r = entry.result;
    const bad = calibrated() && r.normalized_score !== null ? r.normalized_score >= t : r.score >= t;
    flagged += bad ? 1 : 0;
    entry.card.classList.toggle("anomalous", bad);
    entry.card.classList.toggle("ok", !bad);
    entry.card.querySelector(".verdict").textContent = bad ? "ANOMALOUS" : "ok";
  }
  $("summary").textContent = scored ? `${flagged} of ${scored} flagged` : "";
  $("controls").hidden = state.results.length === 0;
}

function makeCard(file) {
  const card = document.createElement("article");
  card.className = "card";
  card.innerHTML = `<div class="picture"><img alt=""></div><div class="facts">
    <div class="name"></div><span class="label">score</span><span class="score">scoring…</span>
    <span class="label">normalised</span><span class="normalized">–</span>
    <span class="label">regions</span><span class="regions">–</span><span class="verdict">…</span></div>`;
  card.querySelector(".name").textContent = file.name;
  card.querySelector(".name").title = file.name;
  card.querySelector("img").src = URL.createObjectURL(file);
  $("results").prepend(card);
  return card;
}

function showPicture(entry) {
  const img = entry.card.querySelector("img");
  const heat = entry.result && entry.result.heatmap_png;
  img.src = heat && $("show-heatmap").checked ? "data:image/png;base64," + heat : entry.original;
}

async function score(file) {
  const card = makeCard(file);
  const entry = { card, result: null, original: card.querySelector("img").src };
  state.results.push(entry);
  $("controls").hidden = false;
  const form = new FormData();
  form.append("images", file, file.name);
  try {
    const body = await api(`/v1/models/${encodeURIComponent($("model").value)}/predict?heatmap=true`, { method: "POST", body: form });
    const r = body.results[0];
    entry.result = r;
    card.querySelector(".score").textContent = fmt(r.score);
    card.querySelector(".normalized").textContent = r.normalized_score === null ? "–" : r.normalized_score.toFixed(3);
    card.querySelector(".regions").textContent = r.regions === null ? "–" : String(r.regions.length);
    card.dataset.score = r.score;
    showPicture(entry);
    if (!calibrated()) resetThreshold(); else relabel();
  } catch (error) {
    card.querySelector(".score").textContent = "–";
    card.querySelector(".verdict").remove();
    card.querySelector(".picture").innerHTML = '<span class="muted">not scored</span>';
    const message = document.createElement("div");
    message.className = "error";
    message.textContent = String(error.message || error);
    card.querySelector(".facts").append(message);
    card.classList.add("failed");
  }
}

async function scoreAll(files) {
  const queue = Array.from(files).filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|bmp|tiff?|webp)$/i.test(f.name));
  const workers = Array.from({ length: Math.min(4, queue.length) }, async () => {
    while (queue.length) await score(queue.shift());
  });
  await Promise.all(workers);
}

function wire() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => { scoreAll(e.target.files); e.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => scoreAll(e.dataTransfer.files));
  $("threshold").addEventListener("input", relabel);
  $("reset").addEventListener("click", resetThreshold);
  $("show-heatmap").addEventListener("change", () => state.results.forEach(showPicture));
  $("clear").addEventListener("click", () => { state.results = []; $("results").innerHTML = ""; relabel(); });
  $("model").addEventListener("change", () => { state.results = []; $("results").innerHTML = ""; describeModel(); });
  $("token").addEventListener("change", () => { sessionStorage.setItem("adcore-token", $("token").value); loadModels(); });
  loadModels();
}

wire();
