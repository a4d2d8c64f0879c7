// ccsync console: live queue depths, job progress, keyboard moves. Data from the server is only
// ever written with textContent, never as HTML: producers' text is hostile.
"use strict";

const DEPTHS_EVERY_MS = 4000;
const JOB_EVERY_MS = 700;

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function getJson(url) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
  });
  if (response.status === 401) {
    window.location.assign("/login");
    return null;
  }
  return response.ok ? response.json() : null;
}

function show(value) {
  return value === null || value === undefined ? "-" : String(value);
}

async function refreshDepths() {
  const depths = await getJson("/api/depths").catch(() => null);
  if (depths) {
    for (const element of document.querySelectorAll("[data-depth]")) {
      element.textContent = show(depths[element.dataset.depth]);
    }
    const ladder = document.getElementById("ladder");
    if (ladder) {
      const levels = Object.entries(depths.delayLevels || {});
      ladder.textContent = levels.length
        ? "delay ladder: " + levels.map(([level, count]) => `level ${level}: ${count}`).join(", ")
        : "";
    }
  }
}

async function followJob(panel) {
  const job = await getJson(`/api/jobs/${encodeURIComponent(panel.dataset.jobId)}`).catch(() => null);
  if (job) {
    const part = (name) => panel.querySelector(`[data-job="${name}"]`);
    part("state").textContent = job.state;
    part("examined").textContent = show(job.examined);
    part("total").textContent = job.total === null ? "?" : String(job.total);
    part("message").textContent = job.message || "";
    const progress = part("progress");
    progress.max = Math.max(1, job.total || 1);
    progress.value = job.state === "done" ? progress.max : job.examined;
    if (job.download) part("download").hidden = false;
    if (job.state === "done" || job.state === "failed") return;
  }
  setTimeout(() => followJob(panel), JOB_EVERY_MS);
}

function rows() {
  return Array.from(document.querySelectorAll("tr[data-href]"));
}

function moveFocus(step) {
  const all = rows();
  if (!all.length) return;
  const current = all.findIndex((row) => row.classList.contains("focused"));
  const next = Math.min(all.length - 1, Math.max(0, current + step));
  if (current >= 0) all[current].classList.remove("focused");
  all[next].classList.add("focused");
  all[next].scrollIntoView({ block: "nearest" });
}

function typing(event) {
  const target = event.target;
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName));
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) return;
  const focused = document.querySelector("tr.focused[data-href]");
  if (event.key === "/") {
    const filter = document.getElementById("filter-first");
    if (filter) { event.preventDefault(); filter.focus(); }
  } else if (event.key === "j") {
    moveFocus(1);
  } else if (event.key === "k") {
    moveFocus(-1);
  } else if (event.key === "Enter" && focused) {
    window.location.assign(focused.dataset.href);
  } else {
    const link = document.querySelector(`nav a[data-key="${CSS.escape(event.key)}"]`);
    if (link) window.location.assign(link.href);
  }
}

function countSelected() {
  const label = document.getElementById("selected-count");
  if (!label) return;
  const ticked = document.querySelectorAll('input[name="selected"]:checked').length;
  label.textContent = ticked ? `act on ${ticked} selected` : label.dataset.none;
}

function wireSelection() {
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll('input[name="selected"]')) box.checked = all.checked;
      countSelected();
    });
  }
  for (const box of document.querySelectorAll('input[name="selected"]')) {
    box.addEventListener("change", countSelected);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.getElementById("depths")) {
    refreshDepths();
    setInterval(refreshDepths, DEPTHS_EVERY_MS);
  }
  const job = document.getElementById("job");
  if (job) followJob(job);
  wireSelection();
  document.addEventListener("keydown", onKey);
});
