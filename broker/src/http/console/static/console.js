// Scopecast console: the only script, served by the broker (no CDN, no build step). It reads
// the server-sent events of /console/live/events and fills the overview's numbers and charts
// and the live view's table; it explains scope containment while a scope is typed. Every value
// is written as text (textContent), never as HTML.
"use strict";
(function () {
  function fmt(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v === "number") return v.toLocaleString("en");
    return String(v);
  }
  var history = { publish_rate: [], deliver_rate: [], p99_ms: [] };
  var KEEP = 120;

  function draw(svg, values) {
    var ns = "http://www.w3.org/2000/svg";
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = 1;
    values.forEach(function (v) { if (v > max) max = v; });
    var pts = values.map(function (v, i) {
      var x = (240 * i) / Math.max(KEEP - 1, 1);
      var y = 58 - (56 * (v || 0)) / max;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(line);
    var label = document.createElementNS(ns, "title");
    label.textContent = "latest " + fmt(values[values.length - 1]) + ", highest " + fmt(max);
    svg.appendChild(label);
  }

  function overview(root, d) {
    root.querySelectorAll("[data-field]").forEach(function (el) {
      el.textContent = fmt(d[el.getAttribute("data-field")]);
    });
    Object.keys(history).forEach(function (k) {
      history[k].push(d[k] || 0);
      if (history[k].length > KEEP) history[k].shift();
      var svg = document.querySelector('svg[data-chart="' + k + '"]');
      if (svg) draw(svg, history[k]);
    });
  }

  function clients(table, d) {
    var body = table.querySelector("tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!d.clients.length) {
      var tr0 = document.createElement("tr");
      var td0 = document.createElement("td");
      td0.colSpan = 6;
      td0.textContent = "No live session.";
      tr0.appendChild(td0);
      body.appendChild(tr0);
    }
    d.clients.forEach(function (c) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-client", c.client_id);
      [c.application, c.client_id, c.connections, c.subscriptions, c.deliver_rate, c.delivered].forEach(function (v, i) {
        var td = document.createElement("td");
        if (i === 1) {
          var code = document.createElement("code");
          code.textContent = v;
          td.appendChild(code);
        } else {
          td.textContent = fmt(v);
        }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    var updated = document.querySelector('[data-field="updated"]');
    if (updated) updated.textContent = "Updated " + new Date(d.t).toISOString().replace(/\.\d+Z$/, "Z");
  }

  function live() {
    var ov = document.querySelector('[data-live="overview"]');
    var tb = document.querySelector('table[data-live="clients"]');
    if (!ov && !tb) return;
    var source = new EventSource("/console/live/events");
    source.onmessage = function (e) {
      var d;
      try { d = JSON.parse(e.data); } catch (err) { return; }
      if (ov) overview(ov, d);
      if (tb) clients(tb, d);
    };
  }

  // The scope editor: says, while typing, what each scope allows, and which are not scopes.
  var FAMILY = /^(subscribe|publish):[A-Za-z0-9_-]+(\.([A-Za-z0-9_-]+|\*))*(\.>)?$|^(subscribe|publish):>$|^webhook:manage$|^system\/([A-Z][A-Za-z]+|\*)\.[cruds]+$/;
  function explain(s) {
    if (s === "webhook:manage") return s + ": manage its own webhook endpoints (within this scope)";
    var sys = /^system\/([A-Za-z*]+)\.([cruds]+)$/.exec(s);
    if (sys) return s + ": FHIR " + (sys[1] === "*" ? "resources of every type" : sys[1] + " resources") + " (SMART system scope; full-resource notifications)";
    var i = s.indexOf(":");
    var verb = s.slice(0, i) === "subscribe" ? "receive" : "publish";
    var p = s.slice(i + 1);
    if (p === ">") return s + ": " + verb + " every topic; contains every other " + s.slice(0, i) + " scope";
    var multi = p.slice(-2) === ".>";
    var base = multi ? p.slice(0, -2) : p;
    var star = base.indexOf("*") >= 0;
    var what = multi
      ? "every topic under " + base + ". (" + base + ".x, " + base + ".x.y, ...)"
      : star
        ? "topics of " + base.split(".").length + " tokens matching " + base + " (* is one token)"
        : "only the topic " + base;
    return s + ": " + verb + " " + what + "; contains any narrower pattern of these";
  }
  function scopeEditor() {
    var area = document.querySelector("[data-scope-editor]");
    var out = document.getElementById("scope-check");
    if (!area || !out) return;
    function check() {
      var parts = area.value.split(/\s+/).filter(Boolean);
      while (out.firstChild) out.removeChild(out.firstChild);
      parts.forEach(function (p) {
        var line = document.createElement("span");
        line.textContent = FAMILY.test(p) ? explain(p) : "Not a scope this broker knows: " + p;
        out.appendChild(line);
        out.appendChild(document.createElement("br"));
      });
      if (parts.length && parts.every(function (p) { return FAMILY.test(p); })) {
        var ok = document.createElement("span");
        ok.textContent = parts.length + " scope(s), each well formed.";
        out.appendChild(ok);
      }
    }
    area.addEventListener("input", check);
    check();
  }

  document.addEventListener("DOMContentLoaded", function () { live(); scopeEditor(); });
})();
