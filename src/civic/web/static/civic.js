// CIVIC dashboard: draws the charts a page describes, and refreshes pages that ask for it.
//
// A chart is a <canvas data-chart="ID"> beside <script type="application/json" id="ID">
// holding a whole Chart.js configuration, built by the server. A <main data-refresh="N">
// is fetched again every N seconds and swapped in place, unless the reader is using a form.
// Bars carry their width as data-width (percent): the page's CSP forbids inline styles.
"use strict";

const charts = [];

function drawCharts(root) {
  root.querySelectorAll("[data-width]").forEach((bar) => { bar.style.width = bar.dataset.width + "%"; });
  while (charts.length) charts.pop().destroy();
  if (typeof Chart === "undefined") return;
  root.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source) return;
    const config = JSON.parse(source.textContent);
    config.options = Object.assign({ animation: false, maintainAspectRatio: false }, config.options || {});
    charts.push(new Chart(canvas, config));
  });
}

function busy(main) {
  const active = document.activeElement;
  return active && main.contains(active) && active.closest("form");
}

async function refresh(main) {
  if (document.hidden || busy(main)) return;
  try {
    const response = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("main");
    if (!fresh || busy(main)) return;
    main.replaceChildren(...fresh.childNodes);
    drawCharts(main);
  } catch (e) {
    // The server may be restarting: try again at the next tick.
  }
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts(document);
  // Delegated, so forms swapped in by a refresh ask too.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !confirm(form.dataset.confirm)) event.preventDefault();
  });
  const main = document.getElementById("main");
  const every = main && Number(main.dataset.refresh);
  if (every > 0) setInterval(() => refresh(main), every * 1000);
});
