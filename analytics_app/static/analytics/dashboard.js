/* Staff usage dashboard: vanilla JS, no build step, charts by the vendored uPlot (vendor/uplot/).
 *
 * Reads GET /api/v1/analytics/usage/ with the session cookie (a GET needs no CSRF token) three
 * times per range: by time (the series and the totals), by time and character, and by time and
 * model (the top lists, summed here over the time buckets). Times are UTC buckets, as the
 * rollups are. Every chart container gets data-* attributes saying what it drew (points,
 * series, the sum of each series), which the browser test compares with the API.
 */
(function () {
  "use strict";

  var root = document.getElementById("usage-dashboard");
  if (!root) return;

  var USAGE_URL = root.getAttribute("data-usage-url") || "/api/v1/analytics/usage/";
  var HOUR = 3600;
  var DAY = 86400;
  var RANGES = {
    "24h": { interval: "hour", step: HOUR, count: 24, label: "last 24 hours, by hour" },
    "7d": { interval: "day", step: DAY, count: 7, label: "last 7 days, by day" },
    "30d": { interval: "day", step: DAY, count: 30, label: "last 30 days, by day" }
  };
  var COUNTS = [
    "user_messages", "replies", "completed", "failed", "cancelled", "blocked", "flagged",
    "prompt_tokens", "completion_tokens", "thumbs_up", "thumbs_down"
  ];
  var COLORS = ["#3b6ef5", "#1f9d55", "#d98c00", "#c93434", "#8e44ad", "#1a9aa0", "#6b7385"];
  var CHART_HEIGHT = 220;
  var TOP_N = 10;
  var MAX_FAILURE_SERIES = 5;

  var el = {
    picker: root.querySelector(".range-picker"),
    rangeLabel: document.getElementById("range-label"),
    loading: document.getElementById("loading"),
    error: document.getElementById("error"),
    empty: document.getElementById("empty-state"),
    totals: document.getElementById("totals"),
    totalsGrid: document.getElementById("totals-grid"),
    charts: document.getElementById("charts"),
    failuresTable: document.getElementById("failures-table"),
    topCharacters: document.getElementById("top-characters"),
    topModels: document.getElementById("top-models"),
    seriesTable: document.getElementById("series-table")
  };

  var plots = []; // uPlot instances on the page, with their containers
  var loadToken = 0; // bumps on every load; late responses of an older range are dropped
  var numberFormat = new Intl.NumberFormat("en-US");

  // --- helpers --------------------------------------------------------------------------------

  function make(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function fmt(n) {
    return n === null || n === undefined ? "–" : numberFormat.format(Math.round(n));
  }

  function fmtCompact(n) {
    if (n === null || n === undefined) return "";
    var a = Math.abs(n);
    if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1).replace(/\.0$/, "") + "M";
    if (a >= 1e3) return (n / 1e3).toFixed(a >= 1e4 ? 0 : 1).replace(/\.0$/, "") + "k";
    return String(Math.round(n * 100) / 100);
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
    return fmt(ms) + " ms";
  }

  function isoSeconds(seconds) {
    return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  function bucketLabel(seconds, interval) {
    var iso = isoSeconds(seconds);
    return interval === "hour" ? iso.slice(0, 10) + " " + iso.slice(11, 16) : iso.slice(0, 10);
  }

  /** The range's buckets in UTC, the current (partial) hour or day last; `end` exclusive. */
  function rangeBounds(key) {
    var r = RANGES[key];
    var now = Math.floor(Date.now() / 1000);
    var end = (Math.floor(now / r.step) + 1) * r.step;
    return { key: key, interval: r.interval, step: r.step, count: r.count,
      start: end - r.count * r.step, end: end };
  }

  function param(seconds, interval) {
    return interval === "hour" ? isoSeconds(seconds) : isoSeconds(seconds).slice(0, 10);
  }

  function fetchUsage(bounds, groupBy) {
    var query = "?from=" + encodeURIComponent(param(bounds.start, bounds.interval)) +
      "&to=" + encodeURIComponent(param(bounds.end, bounds.interval)) +
      "&group_by=" + encodeURIComponent(groupBy);
    return fetch(USAGE_URL + query, {
      headers: { Accept: "application/json" },
      credentials: "same-origin"
    }).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) {
          var err = (data && data.error) || {};
          throw new Error((err.message || res.statusText || "Request failed") +
            " (HTTP " + res.status + ")");
        }
        if (!data || !Array.isArray(data.rows)) throw new Error("Unexpected answer from the API");
        return data;
      });
    });
  }

  function emptyMetrics() {
    var m = { failures: {}, rows: 0 };
    COUNTS.forEach(function (k) { m[k] = 0; });
    return m;
  }

  function addMetrics(acc, row) {
    COUNTS.forEach(function (k) { acc[k] += Number(row[k]) || 0; });
    var failures = row.failures || {};
    Object.keys(failures).forEach(function (code) {
      acc.failures[code] = (acc.failures[code] || 0) + (Number(failures[code]) || 0);
    });
    acc.rows += 1;
    return acc;
  }

  /** A row's bucket start in epoch seconds, or null. `day` is YYYY-MM-DD (UTC midnight). */
  function rowBucket(row, interval) {
    var key = interval === "hour" ? row.hour : row.day;
    if (!key) return null;
    var ms = Date.parse(key);
    return isNaN(ms) ? null : Math.floor(ms / 1000);
  }

  function percentile(row, field, which) {
    var p = row[field];
    if (!p || p[which] === null || p[which] === undefined) return null;
    return Number(p[which]);
  }

  // --- series --------------------------------------------------------------------------------

  /** One slot per bucket of the range (zero where the API has no row), so gaps show as zero. */
  function buildSeries(rows, bounds) {
    var xs = [];
    var index = {};
    var buckets = [];
    var ttft50 = [];
    var ttft95 = [];
    for (var i = 0; i < bounds.count; i++) {
      var x = bounds.start + i * bounds.step;
      index[x] = i;
      xs.push(x);
      buckets.push(emptyMetrics());
      ttft50.push(null);
      ttft95.push(null);
    }
    var outside = 0;
    rows.forEach(function (row) {
      var at = index[rowBucket(row, bounds.interval)];
      if (at === undefined) { outside += 1; return; }
      addMetrics(buckets[at], row);
      // One row per bucket when grouped by time alone; should there be more, the worst wins.
      var p50 = percentile(row, "ttft_ms", "p50");
      var p95 = percentile(row, "ttft_ms", "p95");
      if (p50 !== null) ttft50[at] = ttft50[at] === null ? p50 : Math.max(ttft50[at], p50);
      if (p95 !== null) ttft95[at] = ttft95[at] === null ? p95 : Math.max(ttft95[at], p95);
    });
    function col(name) { return buckets.map(function (b) { return b[name]; }); }
    return { xs: xs, buckets: buckets, col: col, ttft50: ttft50, ttft95: ttft95, outside: outside };
  }

  function failureCodes(failures) {
    return Object.keys(failures).sort(function (a, b) {
      return failures[b] - failures[a] || (a < b ? -1 : 1);
    });
  }

  // --- charts --------------------------------------------------------------------------------

  function destroyCharts() {
    plots.forEach(function (p) { p.plot.destroy(); });
    plots = [];
  }

  function yRange(u, min, max) {
    if (max === null || max === undefined || !isFinite(max) || max <= 0) return [0, 1];
    return [0, max * 1.1];
  }

  // Ticks of counts are whole numbers; of milliseconds too.
  var WHOLE_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4,
    2.5e4, 5e4, 1e5, 2e5, 2.5e5, 5e5, 1e6, 2e6, 2.5e6, 5e6, 1e7, 2e7, 5e7, 1e8, 1e9, 1e10];

  function drawChart(container, bounds, xs, series) {
    container.textContent = "";
    var width = Math.max(260, container.clientWidth || 400);
    var opts = {
      width: width,
      height: CHART_HEIGHT,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: yRange } },
      axes: [
        { stroke: "#6b7385", grid: { stroke: "#eef0f3" } },
        {
          stroke: "#6b7385",
          grid: { stroke: "#eef0f3" },
          size: 52,
          incrs: WHOLE_INCRS,
          values: function (u, splits) { return splits.map(fmtCompact); }
        }
      ],
      series: [{
        label: "Time",
        value: function (u, v) { return v === null || v === undefined ? "–" : bucketLabel(v, bounds.interval); }
      }].concat(series.map(function (s, i) {
        var color = s.color || COLORS[i % COLORS.length];
        return {
          label: s.label,
          stroke: color,
          fill: color + "1f",
          width: 2,
          spanGaps: false,
          points: { show: xs.length <= 48, size: 5 },
          value: function (u, v) { return v === null || v === undefined ? "–" : fmt(v); }
        };
      }))
    };
    var data = [xs].concat(series.map(function (s) { return s.values; }));
    var plot = new uPlot(opts, data, container);
    plots.push({ plot: plot, container: container });

    // What was drawn, for people who inspect the page and for the browser test.
    var sums = {};
    series.forEach(function (s, i) {
      sums[s.key] = plot.data[i + 1].reduce(function (acc, v) { return acc + (v || 0); }, 0);
    });
    container.setAttribute("data-points", String(plot.data[0].length));
    container.setAttribute("data-series", series.map(function (s) { return s.key; }).join(","));
    container.setAttribute("data-sums", JSON.stringify(sums));
    container.setAttribute("data-drawn", "true");
    return plot;
  }

  function drawAll(bounds, s, totals) {
    destroyCharts();
    drawChart(document.getElementById("chart-messages"), bounds, s.xs, [
      { key: "user_messages", label: "User messages", values: s.col("user_messages") },
      { key: "replies", label: "Replies", values: s.col("replies") }
    ]);
    drawChart(document.getElementById("chart-tokens"), bounds, s.xs, [
      { key: "prompt_tokens", label: "Prompt", values: s.col("prompt_tokens") },
      { key: "completion_tokens", label: "Completion", values: s.col("completion_tokens") }
    ]);
    drawChart(document.getElementById("chart-ttft"), bounds, s.xs, [
      { key: "ttft_p50", label: "p50", values: s.ttft50 },
      { key: "ttft_p95", label: "p95", values: s.ttft95, color: COLORS[3] }
    ]);
    drawChart(document.getElementById("chart-moderation"), bounds, s.xs, [
      { key: "flagged", label: "Flagged", values: s.col("flagged"), color: COLORS[2] },
      { key: "blocked", label: "Blocked", values: s.col("blocked"), color: COLORS[3] }
    ]);
    var codes = failureCodes(totals.failures);
    var failureSeries;
    if (codes.length === 0) {
      failureSeries = [{ key: "failed", label: "Failed", values: s.col("failed"), color: COLORS[3] }];
    } else {
      var shown = codes.slice(0, MAX_FAILURE_SERIES);
      var rest = codes.slice(MAX_FAILURE_SERIES);
      failureSeries = shown.map(function (code, i) {
        return {
          key: code,
          label: code,
          color: COLORS[(i + 3) % COLORS.length],
          values: s.buckets.map(function (b) { return b.failures[code] || 0; })
        };
      });
      if (rest.length) {
        failureSeries.push({
          key: "other",
          label: "other",
          color: COLORS[6],
          values: s.buckets.map(function (b) {
            return rest.reduce(function (acc, code) { return acc + (b.failures[code] || 0); }, 0);
          })
        });
      }
    }
    drawChart(document.getElementById("chart-failures"), bounds, s.xs, failureSeries);
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      plots.forEach(function (p) {
        p.plot.setSize({ width: Math.max(260, p.container.clientWidth), height: CHART_HEIGHT });
      });
    }, 150);
  });

  // --- tables and totals ---------------------------------------------------------------------

  function fillBarTable(table, items, columns, emptyText, barClass) {
    var body = table.tBodies[0];
    body.textContent = "";
    table.setAttribute("data-rows", String(items.length));
    if (!items.length) {
      var tr = make("tr", "none");
      var td = make("td", null, emptyText);
      td.colSpan = columns.length + 2;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    var max = Math.max.apply(null, items.map(function (it) { return it.value; })) || 1;
    items.forEach(function (it) {
      var tr = make("tr");
      tr.setAttribute("data-key", it.key);
      var name = make("td", null, it.name);
      name.title = it.name;
      tr.appendChild(name);
      columns.forEach(function (c) { tr.appendChild(make("td", "num", fmt(it[c]))); });
      var barCell = make("td", "bar-col");
      var bar = make("div", "bar" + (barClass ? " " + barClass : ""));
      bar.style.width = Math.max(1, (100 * it.value) / max).toFixed(1) + "%";
      barCell.appendChild(bar);
      tr.appendChild(barCell);
      body.appendChild(tr);
    });
  }

  /** Rows summed over the time buckets by `keyOf`; the top TOP_N by replies, then tokens. */
  function topBy(rows, keyOf, nameOf) {
    var groups = new Map();
    rows.forEach(function (row) {
      var key = keyOf(row);
      var g = groups.get(key);
      if (!g) {
        g = { key: key, name: nameOf(row), metrics: emptyMetrics() };
        groups.set(key, g);
      }
      addMetrics(g.metrics, row);
    });
    return Array.from(groups.values()).map(function (g) {
      var m = g.metrics;
      return { key: g.key, name: g.name, replies: m.replies,
        tokens: m.prompt_tokens + m.completion_tokens, value: m.replies };
    }).filter(function (it) { return it.replies > 0 || it.tokens > 0; })
      .sort(function (a, b) { return b.replies - a.replies || b.tokens - a.tokens; })
      .slice(0, TOP_N);
  }

  function totalItem(key, label, value, sub) {
    var box = make("div");
    box.setAttribute("data-testid", "total-" + key);
    box.setAttribute("data-value", value === null || value === undefined ? "" : String(value));
    box.appendChild(make("dt", null, label));
    var dd = make("dd", null, typeof value === "number" ? fmt(value) : (value || "–"));
    if (sub) dd.appendChild(make("span", "sub", sub));
    box.appendChild(dd);
    return box;
  }

  function renderTotals(t) {
    el.totalsGrid.textContent = "";
    var ttft = t.ttft_ms || {};
    var total = t.total_ms || {};
    var items = [
      totalItem("user_messages", "User messages", t.user_messages),
      totalItem("replies", "Replies", t.replies,
        fmt(t.completed) + " completed · " + fmt(t.failed) + " failed · " +
        fmt(t.cancelled) + " cancelled"),
      totalItem("prompt_tokens", "Prompt tokens", t.prompt_tokens),
      totalItem("completion_tokens", "Completion tokens", t.completion_tokens),
      totalItem("ttft", "Time to first token, p50", fmtMs(ttft.p50), "p95 " + fmtMs(ttft.p95)),
      totalItem("total_time", "Reply time, p50", fmtMs(total.p50), "p95 " + fmtMs(total.p95)),
      totalItem("flagged", "Flagged", t.flagged, fmt(t.blocked) + " blocked"),
      totalItem("thumbs", "Thumbs up / down", fmt(t.thumbs_up) + " / " + fmt(t.thumbs_down))
    ];
    items.forEach(function (it) { el.totalsGrid.appendChild(it); });
  }

  function renderSeriesTable(bounds, s) {
    var body = el.seriesTable.tBodies[0];
    body.textContent = "";
    s.xs.forEach(function (x, i) {
      var b = s.buckets[i];
      var tr = make("tr");
      tr.appendChild(make("td", null, bucketLabel(x, bounds.interval)));
      [b.user_messages, b.replies, b.prompt_tokens, b.completion_tokens].forEach(function (v) {
        tr.appendChild(make("td", "num", fmt(v)));
      });
      tr.appendChild(make("td", "num", fmtMs(s.ttft50[i])));
      tr.appendChild(make("td", "num", fmtMs(s.ttft95[i])));
      [b.failed, b.flagged, b.blocked].forEach(function (v) {
        tr.appendChild(make("td", "num", fmt(v)));
      });
      body.appendChild(tr);
    });
  }

  // --- loading -------------------------------------------------------------------------------

  function setState(state) {
    root.setAttribute("data-state", state);
    el.loading.hidden = state !== "loading";
    el.error.hidden = state !== "error";
    el.empty.hidden = state !== "empty";
    el.totals.hidden = state !== "ready";
    el.charts.hidden = state !== "ready";
  }

  function selectButton(key) {
    var buttons = el.picker.querySelectorAll("button[data-range]");
    for (var i = 0; i < buttons.length; i++) {
      var on = buttons[i].getAttribute("data-range") === key;
      buttons[i].setAttribute("aria-pressed", on ? "true" : "false");
    }
  }

  function load(key) {
    var token = ++loadToken;
    var bounds = rangeBounds(key);
    selectButton(key);
    root.setAttribute("data-range", key);
    el.rangeLabel.textContent = "Times in UTC: " + RANGES[key].label + ", " +
      bucketLabel(bounds.start, bounds.interval) + " to " +
      bucketLabel(bounds.end - bounds.step, bounds.interval) + ".";
    setState("loading");
    Promise.all([
      fetchUsage(bounds, bounds.interval),
      fetchUsage(bounds, bounds.interval + ",character"),
      fetchUsage(bounds, bounds.interval + ",model")
    ]).then(function (answers) {
      if (token !== loadToken) return;
      var byTime = answers[0];
      var rows = byTime.rows;
      root.setAttribute("data-rows", String(rows.length));
      if (!rows.length) {
        destroyCharts();
        setState("empty");
        return;
      }
      var series = buildSeries(rows, bounds);
      root.setAttribute("data-rows-outside", String(series.outside));
      var summed = rows.reduce(addMetrics, emptyMetrics());
      var totals = byTime.totals || summed;
      totals.failures = totals.failures || summed.failures;
      renderTotals(totals);
      setState("ready"); // before drawing: the charts take their containers' width
      drawAll(bounds, series, totals);
      var codes = failureCodes(totals.failures);
      fillBarTable(el.failuresTable, codes.map(function (code) {
        return { key: code, name: code, failures: totals.failures[code], value: totals.failures[code] };
      }), ["failures"], "No failures in this range.", "failure");
      fillBarTable(el.topCharacters, topBy(answers[1].rows,
        function (r) { return String(r.character_id); },
        function (r) { return r.character_name || "#" + r.character_id; }),
        ["replies", "tokens"], "No replies in this range.");
      fillBarTable(el.topModels, topBy(answers[2].rows,
        function (r) { return String(r.model || ""); },
        function (r) { return r.model || "(unknown)"; }),
        ["replies", "tokens"], "No replies in this range.");
      renderSeriesTable(bounds, series);
    }).catch(function (err) {
      if (token !== loadToken) return;
      destroyCharts();
      el.error.textContent = "Could not load usage: " + err.message;
      setState("error");
    });
  }

  function rangeFromHash() {
    var m = /^#range=(\w+)$/.exec(window.location.hash || "");
    return m && RANGES[m[1]] ? m[1] : null;
  }

  el.picker.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-range]");
    if (!button) return;
    var key = button.getAttribute("data-range");
    if (!RANGES[key]) return;
    history.replaceState(null, "", "#range=" + key);
    load(key);
  });

  var initial = rangeFromHash() || root.getAttribute("data-default-range");
  load(RANGES[initial] ? initial : "7d");
})();
