/*
 * Live pages: draws Plotly figures sent by the server as JSON and swaps in
 * server-rendered fragments, polling the page's JSON endpoint until it says "done".
 *
 *   <section data-live data-live-url="/experiments/1/live.json" data-poll-ms="2000"
 *            data-live-initial="live-initial" data-live-done="false">
 *     <div data-live-html="progress">...</div>           replaced by payload.html.progress
 *     <div class="chart" data-figure="global.loss">      drawn from payload.figures.global.loss
 *
 * A static page (no data-live-url) just draws its embedded figures once.
 */
(function () {
  "use strict";

  // No toolbar: its eight buttons per chart filled the tab order and covered the
  // loss chart's legend; the figures are in the CSV exports.
  var PLOT_CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };

  function lookup(obj, path) {
    return path.split(".").reduce(function (o, key) { return o == null ? undefined : o[key]; }, obj);
  }

  function countPoints(fig) {
    var n = 0;
    (fig.data || []).forEach(function (trace) {
      if (trace.showlegend === false || trace.hoverinfo === "skip") { return; }
      (trace.y || []).forEach(function (v) { if (v !== null && v !== undefined) { n += 1; } });
      if (trace.z) { n += trace.z.length; }
    });
    return n;
  }

  function draw(el, fig) {
    if (!fig || !window.Plotly) { return; }
    var points = countPoints(fig);
    el.setAttribute("data-points", String(points));
    var note = el.parentNode.querySelector(".chart-note");
    if (note) { note.hidden = points > 0; }
    window.Plotly.react(el, fig.data, fig.layout, PLOT_CONFIG);
  }

  // CSRF tokens are re-masked on every render; ignore them when deciding whether a
  // fragment changed, so buttons are not replaced under the user's pointer.
  function comparable(html) {
    return html.replace(/name="csrfmiddlewaretoken" value="[^"]*"/g, "");
  }

  function render(root, payload) {
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      draw(el, lookup(payload.figures || {}, el.getAttribute("data-figure")));
    });
    root.querySelectorAll("[data-live-html]").forEach(function (el) {
      var html = (payload.html || {})[el.getAttribute("data-live-html")];
      if (typeof html === "string" && comparable(el.innerHTML.trim()) !== comparable(html.trim())) {
        el.innerHTML = html;
      }
    });
    root.lastPayload = payload;
    dropStaleMessages(payload);
  }

  // A message announcing a status ("Experiment started") is removed once the
  // experiment is no longer in that status.
  function dropStaleMessages(payload) {
    var status = (payload.progress || {}).status;
    if (!status) { return; }
    document.querySelectorAll("[data-tags^='announces:']").forEach(function (el) {
      if (el.getAttribute("data-tags").split(" ")[0] !== "announces:" + status) { el.remove(); }
    });
  }

  function setStatus(root, text) {
    var status = root.querySelector("[data-live-status]");
    if (status) { status.textContent = text; }
  }

  function poll(root) {
    var url = root.getAttribute("data-live-url");
    var every = parseInt(root.getAttribute("data-poll-ms"), 10) || 2000;
    var failures = 0;

    function schedule(ms) { window.setTimeout(tick, ms); }

    function tick() {
      if (document.hidden) { schedule(every); return; }
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.redirected) { throw new Error("signed-out"); }
          var type = response.headers.get("content-type") || "";
          if (!response.ok || type.indexOf("application/json") === -1) { throw new Error(String(response.status)); }
          return response.json();
        })
        .then(function (payload) {
          failures = 0;
          setStatus(root, "");
          render(root, payload);
          if (!payload.done) { schedule(every); }
        })
        .catch(function (error) {
          if (error.message === "signed-out") {
            setStatus(root, "You have been signed out. Reload the page to sign in again.");
            return;
          }
          failures += 1;
          setStatus(root, "Connection lost, retrying…");
          schedule(Math.min(30000, every * Math.pow(2, failures)));
        });
    }

    if (root.getAttribute("data-live-done") !== "true") { schedule(every); }
  }

  function init(root) {
    var initialId = root.getAttribute("data-live-initial");
    var initial = initialId && document.getElementById(initialId);
    if (initial) { render(root, JSON.parse(initial.textContent)); }
    if (root.getAttribute("data-live-url")) { poll(root); }

    // A <select data-figure-switch="sites"> chooses which figure a chart shows.
    root.querySelectorAll("[data-figure-switch]").forEach(function (select) {
      var target = root.querySelector(select.getAttribute("data-figure-switch"));
      select.addEventListener("change", function () {
        target.setAttribute("data-figure", select.value);
        if (root.lastPayload) { draw(target, lookup(root.lastPayload.figures || {}, select.value)); }
      });
    });
  }

  document.querySelectorAll("[data-live]").forEach(init);
})();
