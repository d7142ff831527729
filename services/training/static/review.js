// lesionsynth review: running jobs with live progress, and a balanced dataset's synthetic images to
// accept or reject (click or keyboard). Plain JS, nothing loaded from elsewhere. Talks to this service's
// REST API: /list_jobs, /review_items, /set_review, /review_image (images fetched with the token).
"use strict";

const state = { dataset: "", items: [], current: 0 };

// $, setStatus, headers and api: /static/page.js (shared with the studio).

// ---- jobs ---------------------------------------------------------------------------------------

async function refreshJobs() {
  try {
    const jobs = await api("/list_jobs", { limit: 20 });
    const box = $("jobs");
    box.textContent = "";
    if (!jobs.length) box.textContent = "no jobs";
    for (const j of jobs) {
      const div = document.createElement("div");
      div.className = "job";
      div.dataset.id = j.id;
      const head = document.createElement("div");
      const state = document.createElement("span");
      state.className = "state-" + j.state;
      state.textContent = j.state;
      head.append(j.type + " " + j.id.slice(0, 8) + " ", state, " " + (j.stage || ""));
      div.append(head);
      if (j.state === "running" || j.state === "queued") {
        const bar = document.createElement("progress");
        bar.max = 1;
        bar.value = j.progress || 0;
        div.append(bar, " " + Math.round(100 * (j.progress || 0)) + "%");
      }
      if (j.type === "balance" && j.state === "succeeded" && j.params && j.params.out) {
        const open = document.createElement("button");
        open.textContent = "review";
        open.addEventListener("click", () => { $("dataset").value = j.params.out; loadDataset(); });
        div.append(" ", open);
      }
      if (j.error) div.append(document.createElement("br"), j.error);
      box.append(div);
    }
  } catch (e) {
    $("jobs").textContent = e.message;
  }
}

// ---- review -------------------------------------------------------------------------------------

async function loadDataset() {
  state.dataset = $("dataset").value.trim();
  if (!state.dataset) return setStatus("give a balanced folder", true);
  setStatus("loading ...");
  try {
    const r = await api("/review_items", { dataset: state.dataset });
    state.items = r.items;
    state.current = 0;
    renderItems();
    showCounts(r.counts);
    setStatus(r.items.length ? "" : "no synthetic images in this manifest");
    const url = new URL(location.href);
    url.searchParams.set("dataset", state.dataset);
    history.replaceState(null, "", url);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function showCounts(c) {
  $("counts").textContent =
    c.total + " synthetic: " + c.accepted + " accepted, " + c.rejected + " rejected, " + c.unreviewed + " unreviewed";
}

function recount() {
  const c = { total: state.items.length, accepted: 0, rejected: 0, unreviewed: 0 };
  for (const it of state.items) c[it.decision || "unreviewed"] += 1;
  showCounts(c);
}

async function image(path, img) {
  try {
    const blob = await api("/review_image", { dataset: state.dataset, path: path }, true);
    img.src = URL.createObjectURL(blob);
  } catch (e) {
    img.alt = e.message;
  }
}

function figure(label, path) {
  const f = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = label;
  img.className = label;
  f.append(img, document.createElement("br"), label);
  if (path) image(path, img);
  return f;
}

function renderItems() {
  const box = $("items");
  box.textContent = "";
  state.items.forEach((it, i) => {
    const div = document.createElement("div");
    div.className = "item";
    div.dataset.index = i;
    div.dataset.imagePath = it.image_path;
    const decision = document.createElement("span");
    decision.className = "decision";
    const accept = document.createElement("button");
    accept.className = "accept";
    accept.textContent = "accept (a)";
    accept.addEventListener("click", (e) => { e.stopPropagation(); select(i); decide(i, "accepted"); });
    const reject = document.createElement("button");
    reject.className = "reject";
    reject.textContent = "reject (r)";
    reject.addEventListener("click", (e) => { e.stopPropagation(); select(i); decide(i, "rejected"); });
    div.append(
      figure("source", it.source_image),
      figure("synthetic", it.image_path),
      figure("mask", it.mask_path),
      decision, accept, reject,
      document.createTextNode(" seed " + it.seed),
    );
    div.addEventListener("click", () => select(i));
    box.append(div);
    paint(i);
  });
  select(0);
}

function paint(i) {
  const div = $("items").children[i];
  const d = state.items[i].decision;
  div.classList.toggle("accepted", d === "accepted");
  div.classList.toggle("rejected", d === "rejected");
  div.querySelector(".decision").textContent = d || "unreviewed";
  div.dataset.decision = d;
}

function select(i) {
  if (!state.items.length) return;
  state.current = Math.max(0, Math.min(state.items.length - 1, i));
  for (const div of $("items").children) div.classList.remove("current");
  const div = $("items").children[state.current];
  div.classList.add("current");
  div.scrollIntoView({ block: "nearest" });
}

async function decide(i, decision) {
  const it = state.items[i];
  try {
    const saved = await api("/set_review", { dataset: state.dataset, image_path: it.image_path, decision: decision });
    it.decision = saved.decision;
    paint(i);
    recount();
    setStatus("saved: " + (saved.decision || "unreviewed"));
  } catch (e) {
    setStatus(e.message, true);
  }
}

function onKey(e) {
  if (e.target.tagName === "INPUT") return;
  if (!state.items.length) return;
  const i = state.current;
  if (e.key === "a") decide(i, "accepted").then(() => select(i + 1));
  else if (e.key === "r") decide(i, "rejected").then(() => select(i + 1));
  else if (e.key === "u") decide(i, "");
  else if (e.key === "ArrowDown" || e.key === "ArrowRight" || e.key === "j") select(i + 1);
  else if (e.key === "ArrowUp" || e.key === "ArrowLeft" || e.key === "k") select(i - 1);
  else return;
  e.preventDefault();
}

function init() {
  $("token").value = sessionStorage.getItem("lesionsynth-token") || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("lesionsynth-token", $("token").value.trim());
    refreshJobs();
  });
  $("load").addEventListener("click", loadDataset);
  $("dataset").addEventListener("keydown", (e) => { if (e.key === "Enter") loadDataset(); });
  document.addEventListener("keydown", onKey);
  const given = new URL(location.href).searchParams.get("dataset");
  if (given) {
    $("dataset").value = given;
    loadDataset();
  }
  refreshJobs();
  setInterval(refreshJobs, 2000);
}

init();
