// The evaluation dashboard: fetches /dashboard/api/eval (the JSON of `serval eval`, with
// histograms) and plots it with ECharts. The footer's data attributes say what was drawn, for
// tests and for anyone reading the page's state.
"use strict";

const status = document.getElementById("status");
const errors = [];
const charts = {};
let current = null;

function recordError(message) {
  errors.push(String(message));
  status.dataset.errors = String(errors.length);
  status.dataset.state = "error";
  status.textContent = errors.join("; ");
}
window.addEventListener("error", (e) => recordError(e.message));
window.addEventListener("unhandledrejection", (e) => recordError(e.reason));

async function fetchJson(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${url}: ${response.status}`);
  return body;
}

function chart(id) {
  if (!charts[id]) charts[id] = echarts.init(document.getElementById(id));
  return charts[id];
}

// Column names in a natural order: features[2] before features[10].
function naturalCompare(a, b) {
  return a.localeCompare(b, undefined, { numeric: true });
}

function headline(task) {
  return task === "regression" ? ["rmse", "mae", "r2"] : ["accuracy", "macro_f1", "roc_auc"];
}

function versionsOf(reports) {
  return [...new Set(reports.map((r) => r.version))].sort((a, b) => a - b);
}

function drawQuality(data) {
  const reports = data.reports;
  const starts = [...new Set(reports.map((r) => r.window_start))];
  const task = reports.length ? reports[0].metrics.task : "classification";
  const series = [];
  for (const version of versionsOf(reports)) {
    const of = (pick) => starts.map((start) => {
      const r = reports.find((w) => w.window_start === start && w.version === version);
      const v = r ? pick(r) : undefined;
      return typeof v === "number" ? v : null;
    });
    for (const metric of headline(task)) {
      series.push({ name: `v${version} ${metric}`, type: "line", connectNulls: false, data: of((r) => r.metrics[metric]) });
    }
    if (task === "classification") {
      series.push({ name: `v${version} estimated accuracy`, type: "line", lineStyle: { type: "dotted" }, data: of((r) => r.estimated.accuracy) });
    }
  }
  const thresholds = data.rules
    .filter((rule) => headline(task).includes(rule.metric) || rule.metric.startsWith("estimated."))
    .filter((rule) => typeof rule.below === "number" || typeof rule.above === "number")
    .map((rule) => ({ yAxis: rule.below ?? rule.above, name: rule.name || `${rule.metric} ${rule.below !== undefined ? "<" : ">"} ${rule.below ?? rule.above}` }));
  const fired = reports.flatMap((r) => r.alerts.map((a) => ({ coord: [r.window_start, a.value], name: a.rule })));
  if (series.length) {
    series[0].markLine = { symbol: "none", lineStyle: { type: "dashed", color: "#b00020" }, label: { formatter: "{b}" }, data: thresholds };
    series[0].markPoint = { symbol: "pin", symbolSize: 36, itemStyle: { color: "#b00020" }, label: { show: false }, data: fired };
  }
  chart("quality").setOption({
    tooltip: { trigger: "axis" },
    legend: { type: "scroll", top: 0 },
    grid: { left: 50, right: 20, top: 40, bottom: 40 },
    xAxis: { type: "category", data: starts },
    yAxis: { type: "value", scale: true },
    series,
  }, true);
  return series.length;
}

function drawCoverage(data) {
  const reports = data.reports;
  const starts = [...new Set(reports.map((r) => r.window_start))];
  const series = versionsOf(reports).map((version) => ({
    name: `v${version}`,
    type: "bar",
    data: starts.map((start) => {
      const r = reports.find((w) => w.window_start === start && w.version === version);
      return r ? r.label_coverage : null;
    }),
  }));
  chart("coverage").setOption({
    tooltip: { trigger: "axis" },
    legend: { top: 0 },
    grid: { left: 50, right: 20, top: 30, bottom: 40 },
    xAxis: { type: "category", data: starts },
    yAxis: { type: "value", min: 0, max: 1 },
    series,
  }, true);
  return series.length;
}

// A test value on one scale: 1 at its threshold, above 1 drifted (p-values: log-scaled).
function driftScore(d) {
  if (d.method === "ks" || d.method === "chisquare" || d.method === "z") {
    return Math.log10(Math.max(d.value, 1e-300)) / Math.log10(d.threshold);
  }
  return d.value / d.threshold;
}

function drawDrift(data) {
  const reports = data.reports.filter((r) => Object.keys(r.drift).length > 0);
  const windows = reports.map((r) => `${r.window_start} v${r.version}`);
  const columns = [...new Set(reports.flatMap((r) => Object.keys(r.drift)))].sort(naturalCompare);
  const cells = [];
  reports.forEach((r, x) => {
    for (const [column, d] of Object.entries(r.drift)) {
      cells.push({ value: [x, columns.indexOf(column), Math.min(driftScore(d), 3)], drift: d });
    }
  });
  const drift = chart("drift");
  drift.setOption({
    tooltip: {
      formatter: (p) => `${windows[p.value[0]]}<br>${columns[p.value[1]]}: ${p.data.drift.method} ${p.data.drift.value.toPrecision(4)} (threshold ${p.data.drift.threshold})${p.data.drift.drifted ? " drifted" : ""}`,
    },
    grid: { left: 130, right: 70, top: 10, bottom: 60 },
    xAxis: { type: "category", data: windows },
    yAxis: { type: "category", data: columns },
    visualMap: { min: 0, max: 3, calculable: true, orient: "vertical", right: 0, top: "middle", inRange: { color: ["#f7fbff", "#fdd49e", "#d7301f"] } },
    series: [{ type: "heatmap", data: cells }],
  }, true);
  drift.off("click");
  drift.on("click", (p) => showHistogram(reports[p.value[0]], columns[p.value[1]]));
  status.dataset.driftCells = String(cells.length);
  return reports.length ? 1 : 0;
}

function showHistogram(report, column) {
  const histogram = report && report.histograms && report.histograms[column];
  const select = document.getElementById("feature");
  if (!histogram) {
    chart("histogram").clear();
    return 0;
  }
  select.value = column;
  const labels = histogram.categories
    || histogram.edges.slice(0, -1).map((lo, i) => `${lo.toPrecision(3)}–${histogram.edges[i + 1].toPrecision(3)}`);
  chart("histogram").setOption({
    title: { text: `${column}, ${report.window_start} v${report.version}`, textStyle: { fontSize: 12 } },
    tooltip: { trigger: "axis" },
    legend: { top: 0, right: 0 },
    grid: { left: 50, right: 20, top: 40, bottom: 50 },
    xAxis: { type: "category", data: labels, axisLabel: { rotate: 30 } },
    yAxis: { type: "value", name: "share" },
    series: [
      { name: "reference", type: "bar", data: histogram.reference },
      { name: "window", type: "bar", data: histogram.current },
    ],
  }, true);
  return 1;
}

function drawHistogram(data) {
  const select = document.getElementById("feature");
  const withHistograms = data.reports.filter((r) => r.histograms && Object.keys(r.histograms).length);
  const newest = withHistograms[withHistograms.length - 1];
  const columns = newest ? Object.keys(newest.histograms).sort(naturalCompare) : [];
  select.innerHTML = columns.map((c) => `<option>${c}</option>`).join("");
  select.onchange = () => showHistogram(newest, select.value);
  if (!newest) return showHistogram(null, null);
  // The most drifted column of the newest window first.
  const worst = columns.reduce((a, b) => (driftScore(newest.drift[b]) > driftScore(newest.drift[a]) ? b : a));
  return showHistogram(newest, worst);
}

function drawAlerts(data) {
  const body = document.querySelector("#alerts tbody");
  const rows = data.reports.flatMap((r) => r.alerts);
  body.innerHTML = "";
  for (const a of rows) {
    const tr = document.createElement("tr");
    for (const [text, cls] of [[a.window_start, ""], [a.version, ""], [a.rule, ""], [Number(a.value).toPrecision(4), ""], [a.severity, a.severity]]) {
      const td = document.createElement("td");
      td.textContent = String(text);
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  status.dataset.alerts = String(rows.length);
}

async function show() {
  const model = document.getElementById("model").value;
  const window_ = document.getElementById("window").value;
  const version = document.getElementById("version").value;
  if (!model) return;
  status.dataset.state = "loading";
  const query = new URLSearchParams({ model, window: window_ });
  if (version) query.set("version", version);
  const data = await fetchJson(`/dashboard/api/eval?${query}`);
  current = data;
  const versions = document.getElementById("version");
  if (versions.options.length === 1) {
    for (const v of versionsOf(data.reports)) versions.add(new Option(`v${v}`, String(v)));
  }
  let drawn = 0;
  drawn += drawQuality(data) ? 1 : 0;
  drawn += drawCoverage(data) ? 1 : 0;
  drawn += drawDrift(data);
  drawn += drawHistogram(data);
  drawAlerts(data);
  status.dataset.charts = String(drawn);
  status.dataset.windows = String(data.reports.length);
  if (!errors.length) {
    status.dataset.state = "ready";
    status.textContent = `${data.model}: ${data.reports.length} windows of ${data.window}`;
  }
}

async function start() {
  const params = new URLSearchParams(location.search);
  const { models } = await fetchJson("/dashboard/api/models");
  const select = document.getElementById("model");
  select.innerHTML = models.map((m) => `<option>${m.name}</option>`).join("");
  if (params.get("model")) select.value = params.get("model");
  const windows = document.getElementById("window");
  if (params.get("window")) {
    if (![...windows.options].some((o) => o.value === params.get("window"))) {
      windows.add(new Option(params.get("window"), params.get("window")));
    }
    windows.value = params.get("window");
  }
  for (const id of ["model", "window", "version"]) {
    document.getElementById(id).addEventListener("change", () => show().catch(recordError));
  }
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
  await show();
}

start().catch(recordError);
