// lesionsynth studio: open an image, paint a mask (or ask for a proposal), synthesize, download.
// Plain JS, no dependencies, nothing loaded from elsewhere. Talks to this service's REST API:
// /info, /preview (images the browser cannot decode, e.g. DICOM), /propose_mask, /synthesize_batch,
// /synthesize_dicom (a DICOM source's results as DICOM + SEG, fetched when a DICOM link is first clicked).
"use strict";

const state = {
  bytes: null, width: 0, height: 0, sourceImage: null, mask: null, drawing: false, last: null, run: null,
};

// A DICOM Part 10 file: "DICM" at offset 128.
function isDicom(bytes) {
  return bytes.length > 132 && String.fromCharCode(...bytes.subarray(128, 132)) === "DICM";
}

// $, setStatus, headers and api: /static/page.js (shared with the review page).

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// Every panel is shown DISPLAY px on its long side (small images are enlarged, pixels kept sharp).
const DISPLAY = 240;

function fit(element) {
  element.style.width = Math.round(state.width * state.scale) + "px";
  element.style.height = Math.round(state.height * state.scale) + "px";
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

// ---- image --------------------------------------------------------------------------------------

async function openFile(file) {
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    let img;
    try {
      img = await loadImage(URL.createObjectURL(new Blob([bytes])));
    } catch (e) {
      // DICOM and other formats only the service decodes: it answers a PNG of the same pixels.
      const r = await api("/preview", { image: toBase64(bytes) });
      img = await loadImage("data:image/png;base64," + r.image);
    }
    state.bytes = bytes;
    state.run = null;
    state.sourceImage = img;
    state.width = img.naturalWidth;
    state.height = img.naturalHeight;
    state.scale = DISPLAY / Math.max(state.width, state.height);
    for (const id of ["source", "overlay"]) {
      $(id).width = state.width;
      $(id).height = state.height;
      fit($(id));
    }
    $("source").getContext("2d").drawImage(img, 0, 0);
    state.mask = document.createElement("canvas");
    state.mask.width = state.width;
    state.mask.height = state.height;
    clearMask();
    $("results").textContent = "";
    setStatus("image " + state.width + " x " + state.height + ": paint the region to synthesize into");
  } catch (e) {
    setStatus(e.message, true);
  }
}

// ---- mask ---------------------------------------------------------------------------------------

function maskContext() {
  return state.mask.getContext("2d", { willReadFrequently: true });
}

function clearMask() {
  if (!state.mask) return;
  const m = maskContext();
  m.fillStyle = "#000";
  m.fillRect(0, 0, state.width, state.height);
  redraw();
}

function redraw() {
  const o = $("overlay").getContext("2d");
  o.clearRect(0, 0, state.width, state.height);
  if (!state.sourceImage) return;
  o.drawImage(state.sourceImage, 0, 0);
  const m = maskContext().getImageData(0, 0, state.width, state.height);
  const tint = o.createImageData(state.width, state.height);
  for (let i = 0; i < m.data.length; i += 4) {
    if (m.data[i] > 127) {
      tint.data[i] = 255; tint.data[i + 1] = 40; tint.data[i + 2] = 40; tint.data[i + 3] = 110;
    }
  }
  const layer = document.createElement("canvas");
  layer.width = state.width;
  layer.height = state.height;
  layer.getContext("2d").putImageData(tint, 0, 0);
  o.drawImage(layer, 0, 0);
}

function pointOf(event) {
  const rect = $("overlay").getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * state.width) / rect.width,
    y: ((event.clientY - rect.top) * state.height) / rect.height,
  };
}

function stroke(from, to) {
  const m = maskContext();
  const erase = $("tool-erase").checked;
  m.strokeStyle = m.fillStyle = erase ? "#000" : "#fff";
  m.lineWidth = Number($("brush").value);
  m.lineCap = m.lineJoin = "round";
  m.beginPath();
  m.moveTo(from.x, from.y);
  m.lineTo(to.x, to.y);
  m.stroke();
  m.beginPath();
  m.arc(to.x, to.y, m.lineWidth / 2, 0, 2 * Math.PI);
  m.fill();
  redraw();
}

function maskIsEmpty() {
  const d = maskContext().getImageData(0, 0, state.width, state.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] > 127) return false;
  return true;
}

function maskBase64() {
  return state.mask.toDataURL("image/png").split(",")[1];
}

async function showMask(b64) {
  const img = await loadImage("data:image/png;base64," + b64);
  const m = maskContext();
  m.drawImage(img, 0, 0, state.width, state.height);
  redraw();
}

async function propose() {
  if (!state.bytes) return setStatus("open an image first", true);
  setStatus("asking for a mask proposal ...");
  try {
    const seed = $("seed").value === "" ? null : Number($("seed").value);
    const r = await api("/propose_mask", { image: toBase64(state.bytes), seed: seed, roi_mask: null });
    await showMask(r.mask);
    setStatus("proposed mask (seed " + r.seed + "): edit it or synthesize");
  } catch (e) {
    setStatus(e.message, true);
  }
}

// ---- synthesis ----------------------------------------------------------------------------------

async function run() {
  if (!state.bytes) return setStatus("open an image first", true);
  const count = Math.max(1, Math.min(8, Number($("count").value) || 1));
  const first = $("seed").value === "" ? null : Number($("seed").value);
  const mask = maskIsEmpty() ? null : maskBase64();
  const image = toBase64(state.bytes);
  const items = [];
  for (let i = 0; i < count; i++) {
    items.push({
      image: image,
      mask: mask,
      seed: first === null ? null : first + i,
      steps: Number($("steps").value),
      strength: Number($("strength").value),
    });
  }
  $("run").disabled = true;
  setStatus("synthesizing " + count + " image(s) ...");
  try {
    const results = await api("/synthesize_batch", { items: items });
    $("results").textContent = "";
    if (mask === null && results.length && results[0].mask) await showMask(results[0].mask);
    // A DICOM source: each result also downloads as DICOM (+ its mask as SEG), made from these items.
    const thisRun = isDicom(state.bytes) ? { items: items, results: results, dicom: null } : null;
    state.run = thisRun;
    results.forEach((r, i) => addResult(r, thisRun, i));
    setStatus(results.length + " synthetic image(s), model " + results[0].model_version);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("run").disabled = false;
  }
}

function addResult(r, dicomRun, index) {
  const box = document.createElement("div");
  box.className = "result";
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + r.image;
  img.alt = "synthetic, seed " + r.seed;
  fit(img);
  const link = document.createElement("a");
  link.className = "download";
  link.href = img.src; // the service's PNG byte for byte (its provenance text chunks included)
  link.download = "synthetic_seed" + r.seed + ".png";
  link.textContent = "download PNG";
  link.dataset.seed = r.seed;
  box.append(img, document.createTextNode("seed " + r.seed + " "), link);
  if (dicomRun) {
    for (const kind of ["dicom", "seg"]) {
      const a = document.createElement("a");
      a.className = "download-" + kind;
      a.href = "#";
      a.download = "synthetic_seed" + r.seed + (kind === "seg" ? ".seg.dcm" : ".dcm");
      a.textContent = kind === "seg" ? "SEG" : "download DICOM";
      a.dataset.seed = r.seed;
      a.dataset.index = index;
      a.addEventListener("click", (e) => downloadDicom(e, dicomRun));
      box.append(document.createElement("br"), a);
    }
  }
  $("results").append(box);
}

// The first DICOM link clicked fetches every result of its run as DICOM in one /synthesize_dicom request:
// the same items (each result's seed, steps, strength, and its mask: the painted one or its proposal) in
// the same order, so the same UNet batches and the same pixels as the PNGs. Later clicks download the
// data URL the link then holds.
async function downloadDicom(event, dicomRun) {
  const link = event.currentTarget;
  if (link.dataset.ready) return;
  event.preventDefault();
  if (!dicomRun.dicom) {
    const items = dicomRun.items.map((item, i) => {
      const r = dicomRun.results[i];
      return { image: item.image, mask: item.mask || r.mask, seed: r.seed, steps: r.steps, strength: r.strength };
    });
    setStatus("writing the results as DICOM ...");
    dicomRun.dicom = api("/synthesize_dicom", { items: items });
  }
  let out;
  try {
    out = await dicomRun.dicom;
  } catch (e) {
    dicomRun.dicom = null;
    return setStatus(e.message, true);
  }
  if (state.run !== dicomRun) return; // a newer run or image replaced these results
  for (const a of document.querySelectorAll("#results a.download-dicom, #results a.download-seg")) {
    const r = out[Number(a.dataset.index)];
    a.href = "data:application/dicom;base64," + (a.className === "download-seg" ? r.seg : r.dicom);
    a.dataset.ready = "1";
  }
  setStatus(out.length + " synthetic DICOM image(s), each a new series in the source's study");
  link.click();
}

// ---- wiring -------------------------------------------------------------------------------------

function init() {
  $("token").value = sessionStorage.getItem("lesionsynth-token") || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("lesionsynth-token", $("token").value.trim());
    loadInfo();
  });
  $("file").addEventListener("change", (e) => e.target.files[0] && openFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) openFile(e.dataTransfer.files[0]);
  });
  const overlay = $("overlay");
  overlay.addEventListener("pointerdown", (e) => {
    if (!state.mask) return;
    state.drawing = true;
    state.last = pointOf(e);
    stroke(state.last, state.last);
  });
  overlay.addEventListener("pointermove", (e) => {
    if (!state.drawing) return;
    const p = pointOf(e);
    stroke(state.last, p);
    state.last = p;
  });
  for (const ev of ["pointerup", "pointerleave"]) overlay.addEventListener(ev, () => { state.drawing = false; });
  $("brush").addEventListener("input", () => { $("brush-size").textContent = $("brush").value; });
  $("clear").addEventListener("click", clearMask);
  $("propose").addEventListener("click", propose);
  $("run").addEventListener("click", run);
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "radio" && e.target.type !== "range") return;
    if (e.key === "b") $("tool-paint").checked = true;
    if (e.key === "e") $("tool-erase").checked = true;
  });
  for (const id of ["steps", "strength"]) {
    $(id).addEventListener("input", () => { $(id).dataset.edited = "1"; });
  }
  loadInfo();
}

async function loadInfo() {
  try {
    const info = await api("/info", {});
    $("model").textContent = "model " + info.model_version + " (" + info.resolution + " px)";
    $("steps").max = info.max_steps;
    // The service's defaults, unless the person has already typed a value (the reply may come late:
    // after the token is entered, or while someone fills the form).
    if (!$("steps").dataset.edited) $("steps").value = info.default_steps;
    if (!$("strength").dataset.edited) $("strength").value = info.default_strength;
  } catch (e) {
    setStatus(e.message, true);
  }
}

init();
