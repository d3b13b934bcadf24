// The jsorc dashboard: polls /dashboard/data every sample_s (2 s) and draws each chart with
// uPlot. No inline script (the page's CSP is default-src 'self'); the state a test or an
// operator's console may read is window.jsorcDashboard: {charts: {id: uPlot}, data: last
// answer}. Each chart's element carries data-points (non-empty points drawn) and
// data-series (its series' labels), so a check needs no access to uPlot's internals.
(function () {
  "use strict";
  const state = { charts: {}, labels: {}, data: null, errors: 0 };
  window.jsorcDashboard = state;
  const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                   "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }

  function fill(tableId, rows, cells) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(...rows.map(function (row) {
      const tr = el("tr");
      cells(row).forEach(function (c) { tr.appendChild(el("td", c)); });
      return tr;
    }));
  }

  function chartBox(chart) {
    let box = document.getElementById("chart-" + chart.id);
    if (!box) {
      box = el("figure", null, "chart");
      box.id = "chart-" + chart.id;
      box.appendChild(el("figcaption"));
      box.appendChild(el("div", null, "plot"));
      document.getElementById("charts").appendChild(box);
    }
    box.querySelector("figcaption").textContent =
      chart.title + " [" + chart.unit + "] · from " + chart.source +
      (chart.series.length ? "" : " · no data in this window");
    return box;
  }

  function draw(chart) {
    const box = chartBox(chart);
    const labels = chart.series.map(function (s) { return s.label; });
    const data = [chart.t].concat(chart.series.map(function (s) { return s.values; }));
    let points = 0;
    chart.series.forEach(function (s) {
      s.values.forEach(function (v) { if (v !== null) points += 1; });
    });
    box.dataset.points = String(points);
    box.dataset.series = labels.join("|");
    box.dataset.source = chart.source;
    const key = labels.join("|");
    let plot = state.charts[chart.id];
    if (plot && state.labels[chart.id] !== key) {  // series came or went: draw anew
      plot.destroy();
      plot = null;
    }
    if (!plot) {
      const target = box.querySelector(".plot");
      const opts = {
        width: Math.max(320, Math.min(target.clientWidth || 560, 900)),
        height: 220,
        series: [{}].concat(labels.map(function (label, i) {
          return { label: label, stroke: palette[i % palette.length], width: 1.5,
                   spanGaps: false, paths: chart.id === "placement"
                     ? uPlot.paths.stepped({ align: 1 }) : undefined };
        })),
        axes: [{}, { label: chart.unit, size: 60 }],
        scales: { x: { time: true } },
        legend: { live: false },
      };
      plot = new uPlot(opts, data, target);
      state.charts[chart.id] = plot;
      state.labels[chart.id] = key;
    } else {
      plot.setData(data);
    }
  }

  function render(data) {
    state.data = data;
    data.charts.forEach(draw);
    fill("actions", data.actions, function (a) {
      return [a.name, a.placement, a.desired, a.ready, a.transition ? "yes" : ""];
    });
    fill("decisions", data.decisions.slice().reverse(), function (d) {
      return [clock(d.time), d.action || "—", d.previous, d.placement, d.source, d.reason,
              d.error];
    });
    fill("services", data.services, function (s) {
      return [s.name, s.state, s.restarts, s.last_error, s.message];
    });
    if (!data.services.length) {
      fill("services", [{}], function () { return ["none kept alive", "", "", "", ""]; });
    }
    document.getElementById("policy").textContent = "policy " + data.policy +
      ", automation " + (data.automation ? "on" : "off");
    const prom = data.prometheus;
    document.getElementById("sources").textContent =
      "runtime series: sampled every " + data.sample_s + " s by jsorc serve; Prometheus: " +
      (prom.url ? prom.url + (prom.error ? " (error: " + prom.error + ")" : "") : prom.error);
    const updated = document.getElementById("updated");
    updated.textContent = "updated " + clock(data.now);
    updated.className = "muted";
  }

  function poll() {
    const windowS = document.getElementById("window").value;
    fetch("/dashboard/data?window_s=" + encodeURIComponent(windowS),
          { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (answer.status === 401) { window.location.reload(); return null; }
        return answer.json().then(function (body) {
          if (!answer.ok) throw new Error(body.message || answer.statusText);
          return body;
        });
      })
      .then(function (body) { if (body) render(body); })
      .catch(function (err) {
        state.errors += 1;
        const updated = document.getElementById("updated");
        updated.textContent = "cannot reach jsorc serve: " + err.message;
        updated.className = "error";
      })
      .finally(function () {
        const every = state.data ? state.data.sample_s : 2;
        window.setTimeout(poll, every * 1000);
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("window").addEventListener("change", function () {
      Object.keys(state.charts).forEach(function (id) { state.charts[id].destroy(); });
      state.charts = {};
      state.labels = {};
    });
    poll();
  });
})();
