// Tessera console: live updates over /ui/ws. Everything else is plain HTML forms and links.
// Values are written with textContent only (never as HTML), so a value holding markup stays text.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (!live || !window.WebSocket) { return; }
  var params = new URLSearchParams({ namespace: live.dataset.namespace, env: live.dataset.env });
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var socket = new WebSocket(scheme + location.host + "/ui/ws?" + params.toString());
  var note = document.getElementById("live-note");

  function say(text) {
    note.textContent = text;
    note.hidden = false;
  }

  function rowOf(key) {
    var rows = live.querySelectorAll("[data-key]");
    for (var i = 0; i < rows.length; i++) { if (rows[i].dataset.key === key) { return rows[i]; } }
    return null;
  }

  function setText(row, selector, text) {
    var cell = row.querySelector(selector);
    if (cell) { cell.textContent = text; }
  }

  socket.addEventListener("open", function () {
    socket.send(JSON.stringify({
      type: "subscribe",
      keys: live.dataset.watch.split(","),
      since: parseInt(live.dataset.revision, 10)
    }));
  });

  socket.addEventListener("message", function (message) {
    var change;
    try { change = JSON.parse(message.data); } catch (e) { return; }
    if (change.type === "error") { say("Live updates stopped: " + change.message); return; }
    if (change.type !== "change") { return; }
    var who = change.changed_by || "someone";
    var verb = change.action === "delete" ? "deleted" : (change.action === "create" ? "created" : (change.action === "rollback" ? "rolled back" : "changed"));
    say(change.key + " was " + verb + " by " + who + " (version " + change.version + " in " + change.env + ")" +
        (document.getElementById("edit-form") ? ": reload before editing, or your save will be refused as stale." : "."));
    var row = rowOf(change.key);
    if (!row) { return; }
    var resolved = change.resolved;
    var valueCell = row.querySelector(".value");
    if (valueCell) {
      valueCell.textContent = "";
      var shown = document.createElement(resolved && resolved.value !== undefined ? "code" : "span");
      if (!resolved) { shown.className = "muted"; shown.textContent = "deleted"; }
      else if (resolved.secret) { shown.className = "secret"; shown.textContent = "•••••• secret"; }
      else if (resolved.value !== undefined) { shown.textContent = resolved.value; shown.id = "value-text"; }
      else { shown.className = "muted"; shown.textContent = "not readable"; }
      valueCell.appendChild(shown);
    }
    if (resolved) {
      setText(row, ".version", String(resolved.version));
      setText(row, ".env", resolved.env);
      setText(row, ".by", resolved.updated_by);
      setText(row, ".at", resolved.updated_at);
      setText(document, "#version", String(resolved.version));  // the key page's facts
      setText(document, "#resolved-env", resolved.env);
      setText(document, "#updated-by", resolved.updated_by);
      setText(document, "#updated-at", resolved.updated_at);
    } else {
      setText(row, ".by", who);
    }
    row.classList.add("flash");
  });
})();
