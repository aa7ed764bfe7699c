// The inspection-station page: send photos to /v1/predict, show the decision, the pictures and
// a strip of the last results. Plain JavaScript, no library, so it works offline.
"use strict";

const HISTORY_LENGTH = 12;
const $ = (id) => document.getElementById(id);
const history = [];
let model = null;

function headers() {
  const key = $("api-key").value || localStorage.getItem("minimaxad-api-key") || "";
  return key ? { "X-API-Key": key } : {};
}

function say(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", isError);
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model", { headers: headers() });
    if (response.status === 401) {
      $("key-box").hidden = false;
      say("This service needs an API key: type it above, then pick a photo.", true);
      return;
    }
    model = await response.json();
    $("model-line").textContent =
      `${model.model_id} · ${model.backbone} · ${model.input_size} px · backend ${model.backend} on ${model.device}`;
    const select = $("category");
    select.replaceChildren();
    if (model.categories.length > 1) {
      const any = new Option("(model threshold)", "");
      select.add(any);
      for (const name of model.categories) select.add(new Option(name, name));
      $("category-box").hidden = false;
    }
  } catch (error) {
    $("model-line").textContent = "service not reachable";
  }
}

async function pollReady() {
  const badge = $("status");
  try {
    const response = await fetch("/v1/ready");
    const body = await response.json();
    badge.textContent = body.status;
    badge.className = "status " + (response.ok ? "ready" : "down");
  } catch (error) {
    badge.textContent = "offline";
    badge.className = "status down";
  }
}

function formatNumber(value) {
  if (value === null || value === undefined) return "–";
  return Math.abs(value) >= 100 ? value.toFixed(1) : value.toPrecision(4);
}

function show(entry) {
  $("result").hidden = false;
  $("photo").src = entry.photoUrl;
  const result = entry.result;
  const decision = $("decision");
  if (!result) {
    decision.textContent = "ERROR";
    decision.className = "decision";
    $("overlay").removeAttribute("src");
    $("mask").removeAttribute("src");
    $("score").textContent = "–";
    $("threshold").textContent = "–";
    $("details").textContent = entry.error;
    return;
  }
  decision.textContent = result.decision.toUpperCase();
  decision.className = "decision " + result.decision;
  $("score").textContent = formatNumber(result.score);
  $("threshold").textContent = formatNumber(result.threshold);
  const fill = $("gauge-fill");
  const normalized = result.normalized_score === null ? 0 : result.normalized_score;
  fill.style.width = `${Math.round(100 * Math.min(1, Math.max(0, normalized)))}%`;
  fill.classList.toggle("anomalous", result.decision === "anomalous");
  const category = result.category ? ` · category ${result.category}` : "";
  $("details").textContent =
    ` · ${result.width}×${result.height} px${category} · ${result.timing_ms.total.toFixed(0)} ms ` +
    `(batch of ${result.batch_size})`;
  if (result.heatmap_png) $("overlay").src = "data:image/png;base64," + result.heatmap_png;
  if (result.mask_png) $("mask").src = "data:image/png;base64," + result.mask_png;
}

function remember(entry) {
  history.unshift(entry);
  while (history.length > HISTORY_LENGTH) {
    const old = history.pop();
    URL.revokeObjectURL(old.photoUrl);
  }
  const strip = $("history");
  strip.replaceChildren();
  for (const item of history) {
    const box = document.createElement("div");
    const state = item.result ? item.result.decision : "failed";
    box.className = "item " + state;
    const thumb = document.createElement("img");
    thumb.src = item.photoUrl;
    thumb.alt = item.name;
    const label = document.createElement("div");
    label.textContent = item.result ? `${state} ${formatNumber(item.result.score)}` : "error";
    box.title = item.name;
    box.append(thumb, label);
    box.addEventListener("click", () => show(item));
    strip.append(box);
  }
}

async function inspect(blob, name) {
  const form = new FormData();
  form.append("image", blob, name);
  const category = $("category").value;
  if (category) form.append("category", category);
  const key = $("api-key").value;
  if (key) localStorage.setItem("minimaxad-api-key", key);
  const entry = { name, photoUrl: URL.createObjectURL(blob), result: null, error: "" };
  say(`inspecting ${name}…`);
  try {
    const response = await fetch("/v1/predict?return=heatmap,mask", { method: "POST", body: form, headers: headers() });
    const body = await response.json();
    if (!response.ok) {
      entry.error = `${response.status}: ${body.detail || response.statusText}`;
      if (response.status === 401) $("key-box").hidden = false;
      say(`${name}: ${entry.error}`, true);
    } else {
      entry.result = body.results[0];
      say(`${name}: ${entry.result.decision}`);
    }
  } catch (error) {
    entry.error = String(error);
    say(`${name}: ${entry.error}`, true);
  }
  show(entry);
  remember(entry);
  if (!model) loadModel();
}

async function inspectFiles(files) {
  for (const file of files) await inspect(file, file.name);  // one at a time: results stay in order
}

function setUpDropZone() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => {
    inspectFiles(Array.from(event.target.files));
    event.target.value = "";
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    inspectFiles(Array.from(event.dataTransfer.files).filter((f) => f.type.startsWith("image/")));
  });
}

function setUpCamera() {
  const video = $("camera");
  $("camera-button").addEventListener("click", async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("This browser gives no camera access here (it needs https or localhost).", true);
      return;
    }
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
      video.hidden = false;
      $("snapshot-button").hidden = false;
    } catch (error) {
      say(`camera: ${error.message}`, true);
    }
  });
  $("snapshot-button").addEventListener("click", () => {
    const canvas = $("snapshot-canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    canvas.toBlob((blob) => inspect(blob, `camera-${stamp}.png`), "image/png");
  });
}

setUpDropZone();
setUpCamera();
loadModel();
pollReady();
setInterval(pollReady, 5000);
