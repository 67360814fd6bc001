// The live parts of the document browser, over skald's own SSE APIs with the session cookie:
// a query watch (POST /api/v1/db/{db}/query/watch, read with fetch because EventSource cannot POST)
// and a topic tail (GET /api/v1/db/{db}/events/stream with EventSource, which resumes by itself).
(function () {
  "use strict";

  function cell(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "object") {
      var keys = Object.keys(value);
      if (keys.length === 1 && keys[0].charAt(0) === "$") return String(value[keys[0]]);
      return JSON.stringify(value);
    }
    return String(value);
  }

  function renderTable(target, result) {
    var table = document.createElement("table");
    table.className = "data";
    var head = table.createTHead().insertRow();
    result.columns.forEach(function (name) {
      var th = document.createElement("th");
      th.scope = "col";
      th.textContent = name;
      head.appendChild(th);
    });
    var body = table.createTBody();
    result.rows.forEach(function (row) {
      var tr = body.insertRow();
      row.forEach(function (value) {
        var td = tr.insertCell();
        td.textContent = cell(value);
        if (value === null) td.className = "null";
      });
    });
    target.replaceChildren(table);
  }

  function parseFrames(buffer, onEvent) {
    var frames = buffer.split("\n\n");
    var rest = frames.pop();
    frames.forEach(function (frame) {
      var event = "message", data = [];
      frame.split("\n").forEach(function (line) {
        if (line.indexOf("event:") === 0) event = line.slice(6).trim();
        else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
      });
      if (data.length) onEvent(event, data.join("\n"));
    });
    return rest;
  }

  function startWatch(root) {
    var form = root.querySelector("form");
    var status = root.querySelector("[data-status]");
    var output = root.querySelector("[data-output]");
    var controller = null;
    var updates = 0;

    function say(text, isError) {
      status.textContent = text;
      status.classList.toggle("error-text", !!isError);
    }

    function watch(sql) {
      if (controller) controller.abort();
      controller = new AbortController();
      updates = 0;
      root.dataset.updates = "0";
      say("connecting…");
      var url = new URL(window.location.href);
      url.searchParams.set("sql", sql);
      window.history.replaceState(null, "", url.toString());
      fetch("/api/v1/db/" + encodeURIComponent(root.dataset.db) + "/query/watch", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": root.dataset.csrf },
        body: JSON.stringify({ sql: sql }),
        signal: controller.signal,
      }).then(function (response) {
        if (!response.ok) {
          return response.json().then(function (problem) {
            say((problem.title || "Error") + ": " + (problem.detail || response.status), true);
          });
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function onEvent(event, data) {
          if (event === "snapshot" || event === "update") {
            var result = JSON.parse(data);
            renderTable(output, result);
            updates += 1;
            root.dataset.updates = String(updates);
            say((event === "snapshot" ? "live · " : "live · updated · ") + result.row_count + " rows · " +
                new Date().toLocaleTimeString());
          } else if (event === "error") {
            var problem = JSON.parse(data);
            say((problem.title || "Error") + ": " + (problem.detail || ""), true);
          }
        }
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { say("the watch ended; run it again to resume"); return; }
            buffer = parseFrames(buffer + decoder.decode(chunk.value, { stream: true }), onEvent);
            return pump();
          });
        }
        return pump();
      }).catch(function (error) {
        if (error.name !== "AbortError") say("connection lost: " + error.message, true);
      });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      watch(form.elements.sql.value);
    });
    if (form.elements.sql.value.trim()) watch(form.elements.sql.value);
  }

  function payloadText(message) {
    if ("payload" in message) return JSON.stringify(message.payload);
    if ("payload_text" in message) return message.payload_text;
    return "base64: " + message.payload_base64;
  }

  function startTail(root) {
    var body = root.querySelector("tbody");
    var status = root.querySelector("[data-status]");
    var params = new URLSearchParams();
    params.append("topic", root.dataset.topic || "#");
    if (root.dataset.since) params.set("since_id", root.dataset.since);
    else params.set("tail", "50");
    var source = new EventSource("/api/v1/db/" + encodeURIComponent(root.dataset.db) + "/events/stream?" + params);
    var count = 0;
    status.textContent = "connecting…";
    source.addEventListener("open", function () { status.textContent = "live"; });
    source.addEventListener("message", function (event) {
      var message = JSON.parse(event.data);
      var tr = document.createElement("tr");
      [String(message.id), message.topic, message.created_at, payloadText(message)].forEach(function (text, i) {
        var td = document.createElement("td");
        td.textContent = text;
        if (i === 3) td.className = "payload";
        tr.appendChild(td);
      });
      body.insertBefore(tr, body.firstChild);
      while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
      count += 1;
      root.dataset.count = String(count);
      status.textContent = "live · " + count + " messages · last id " + message.id;
    });
    source.addEventListener("reset", function (event) {
      status.textContent = "older messages were pruned: resuming from the oldest kept (" + event.data + ")";
    });
    source.addEventListener("error", function () {
      status.textContent = source.readyState === EventSource.CLOSED ? "the stream was refused or closed" : "reconnecting…";
    });
  }

  // The job queues overview: counts refreshed from GET …/jobs/queues whenever GET …/jobs/events says a
  // job changed (one refresh at a time; changes during one cause one more). Only the rows the page
  // already shows are updated: the server chose them for this viewer's scopes.
  function startQueueCounts(root) {
    var db = encodeURIComponent(root.dataset.db);
    var status = root.querySelector("[data-status]");
    var busy = false, again = false, updates = 0;

    function fill(row, queue) {
      var link = row.querySelector("td:first-child a");
      row.querySelectorAll("td[data-state]").forEach(function (td) {
        var n = queue.counts[td.dataset.state] || 0;
        if (n > 0 && link) {
          var a = document.createElement("a");
          a.href = link.getAttribute("href") + "?state=" + encodeURIComponent(td.dataset.state);
          a.textContent = String(n);
          td.replaceChildren(a);
        } else {
          td.textContent = "0";
        }
      });
      var pill = row.querySelector("[data-paused] .pill");
      if (pill) {
        pill.textContent = queue.paused ? "paused" : "active";
        pill.className = "pill " + (queue.paused ? "paused" : "active");
      }
    }

    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch("/api/v1/db/" + db + "/jobs/queues", { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("status " + response.status);
          return response.json();
        })
        .then(function (body) {
          var byName = {};
          body.queues.forEach(function (queue) { byName[queue.name] = queue; });
          root.querySelectorAll("tr[data-queue]").forEach(function (row) {
            var queue = byName[row.dataset.queue];
            if (queue) fill(row, queue);
          });
          updates += 1;
          root.dataset.updates = String(updates);
          status.textContent = "live · updated " + new Date().toLocaleTimeString();
        })
        .catch(function (error) { status.textContent = "could not refresh the counts: " + error.message; })
        .then(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }

    var source = new EventSource("/api/v1/db/" + db + "/jobs/events");
    source.addEventListener("open", function () { status.textContent = "live"; root.dataset.live = "1"; });
    source.addEventListener("job", refresh);
    source.addEventListener("reset", refresh);
    source.addEventListener("error", function () {
      status.textContent = source.readyState === EventSource.CLOSED ? "live counts stopped; reload the page" : "reconnecting…";
    });
  }

  document.querySelectorAll("[data-live-query]").forEach(startWatch);
  document.querySelectorAll("[data-job-counts]").forEach(startQueueCounts);
  document.querySelectorAll("[data-topic-tail]").forEach(startTail);
})();
