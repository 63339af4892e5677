// The local page: reads the agent's JSON (api/status every 2 s,
// api/report every 30 s) and its live presses (api/events, server-sent
// events). Read-only; every text is set as text, never as HTML.
"use strict";

const LIVE_ROWS = 20;

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "–" : String(text);
  if (className) td.className = className;
  return td;
}

function stateCell(state) {
  const td = cell(state, "state");
  td.dataset.state = state;
  return td;
}

function localTime(iso) {
  if (!iso) return "–";
  const at = new Date(iso);
  return isNaN(at) ? iso : at.toLocaleString();
}

function replaceRows(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows);
}

function showStatus(status) {
  const health = document.getElementById("health");
  health.dataset.health = status.health;
  health.textContent = "health: " + status.health;
  document.getElementById("agent-version").textContent = status.daemon.version || "";
  document.getElementById("problems").replaceChildren(...status.problems.map((problem) => {
    const item = document.createElement("li");
    item.textContent = problem;
    return item;
  }));
  replaceRows(document.getElementById("devices"), status.devices.map((device) => {
    const row = document.createElement("tr");
    row.dataset.device = device.name;
    row.append(cell(device.name), cell(device.model), cell(device.port), stateCell(device.state),
      cell(localTime(device.last_frame_at)), cell(device.presses, "number"), cell(device.last_error));
    return row;
  }));
  replaceRows(document.getElementById("sinks"), status.sinks.map((sink) => {
    const row = document.createElement("tr");
    row.dataset.sink = sink.name;
    row.append(cell(sink.name), stateCell(sink.state), cell(sink.pending, "number"),
      cell(sink.delivered, "number"), cell(sink.dead_letter, "number"),
      cell(localTime(sink.last_success_at)), cell(sink.last_error));
    return row;
  }));
}

function showIndex(id, index) {
  const box = document.getElementById(id);
  const value = box.querySelector(".value");
  const interval = box.querySelector(".interval");
  if (!index) {
    value.textContent = "–";
    interval.textContent = "no answers yet";
    box.classList.remove("few");
    return;
  }
  value.textContent = index.value.toFixed(1);
  interval.textContent = "95 %: " + index.low.toFixed(1) + " to " + index.high.toFixed(1) +
    " · " + index.answers + " answers" + (index.few_answers ? " (fewer than 30)" : "");
  box.classList.toggle("few", index.few_answers);
}

function svg(name, attributes) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

// IEL per day, -100 to 100, with the interval as a band.
function drawChart(days) {
  const chart = document.getElementById("chart");
  const width = 720, height = 220, left = 40, right = 24, top = 10, bottom = 30;
  const x = (index) => left + (width - left - right) * (days.length > 1 ? index / (days.length - 1) : 0.5);
  const y = (value) => top + (height - top - bottom) * (100 - value) / 200;
  const parts = [];
  for (const value of [-100, -50, 0, 50, 100]) {
    parts.push(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    const label = svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" });
    label.textContent = value;
    parts.push(label);
  }
  days.forEach((day, index) => {
    if (index % 7 === days.length % 7 || index === days.length - 1) {
      const label = svg("text", { x: x(index), y: height - 10, "text-anchor": "middle" });
      label.textContent = day.date.slice(5);
      parts.push(label);
    }
  });
  // One band and one line per run of days with answers.
  let run = [];
  const runs = [];
  days.forEach((day, index) => {
    if (day.iel) run.push([index, day.iel]); else if (run.length) { runs.push(run); run = []; }
  });
  if (run.length) runs.push(run);
  for (const points of runs) {
    const upper = points.map(([index, iel]) => x(index) + "," + y(iel.high));
    const lower = points.slice().reverse().map(([index, iel]) => x(index) + "," + y(iel.low));
    if (points.length > 1) {
      parts.push(svg("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
      parts.push(svg("polyline", { class: "line", points: points.map(([index, iel]) => x(index) + "," + y(iel.value)).join(" ") }));
    } else {
      const [index, iel] = points[0];
      parts.push(svg("rect", { class: "band", x: x(index) - 4, width: 8, y: y(iel.high), height: Math.max(1, y(iel.low) - y(iel.high)) }));
    }
    for (const [index, iel] of points) {
      const dot = svg("circle", { class: iel.few_answers ? "dot few" : "dot", cx: x(index), cy: y(iel.value), r: 3.5 });
      const title = svg("title", {});
      title.textContent = days[index].date + ": " + iel.value.toFixed(1) + " (" + iel.low.toFixed(1) +
        " to " + iel.high.toFixed(1) + ", " + iel.answers + " answers)";
      dot.append(title);
      parts.push(dot);
    }
  }
  chart.replaceChildren(...parts);
}

function showReport(report) {
  showIndex("iel-today", report.today);
  showIndex("iel-week", report.week);
  drawChart(report.days);
}

async function refresh(path, show) {
  try {
    const answer = await fetch(path, { cache: "no-store" });
    if (answer.ok || answer.status === 503) show(await answer.json());
  } catch (error) {
    document.getElementById("health").textContent = "the agent does not answer (" + error.message + ")";
  }
}

const pendingRefresh = {};

function refreshSoon(path, show, delay) {
  if (pendingRefresh[path]) return;
  pendingRefresh[path] = setTimeout(() => {
    pendingRefresh[path] = null;
    refresh(path, show);
  }, delay);
}

function addPress(press) {
  const body = document.querySelector("#presses tbody");
  const row = document.createElement("tr");
  row.className = "new";
  row.dataset.id = press.id;
  row.dataset.device = press.device;
  row.append(cell(localTime(press.ts)), cell(press.device), cell(press.unit),
    cell(press.key, "number"), cell(press.suppressed ? (press.answer || "–") + " (suppressed)" : press.answer));
  body.prepend(row);
  while (body.rows.length > LIVE_ROWS) body.deleteRow(-1);
  document.getElementById("live-state").textContent = "live";
}

function followPresses() {
  const events = new EventSource("api/events");
  events.addEventListener("press", (message) => {
    addPress(JSON.parse(message.data));
    // The counts and today's index move with the presses, at most a few
    // times a second however fast they come.
    refreshSoon("api/status", showStatus, 300);
    refreshSoon("api/report", showReport, 1000);
  });
  events.addEventListener("missed", (message) => {
    document.getElementById("live-state").textContent =
      message.data + " presses came faster than this page could show them";
  });
  events.onopen = () => {
    document.body.dataset.live = "open";
    document.getElementById("live-state").textContent = "live: waiting for presses…";
  };
  events.onerror = () => {
    document.body.dataset.live = "reconnecting";
    document.getElementById("live-state").textContent = "reconnecting to the agent…";
  };
}

refresh("api/status", showStatus);
refresh("api/report", showReport);
setInterval(() => refresh("api/status", showStatus), 2000);
setInterval(() => refresh("api/report", showReport), 30000);
followPresses();
