// MailDesk: local times and busy forms on every page; on mailbox pages, keeps the open
// mailbox current over /ws/mailboxes/{id}.
// No framework. The server renders every page; this script only patches it:
//   added/updated -> insert or refresh the row when the message is in the folder shown,
//   updated out of the folder / removed -> drop the row, counts -> sidebar numbers,
//   reload -> fetch this page again and swap the list and the sidebar.
// The socket reconnects with jittered exponential backoff and passes the last change id it
// saw (?since=), so the server replays what was missed or asks for a reload.
(function () {
  "use strict";

  var app = document.getElementById("app");
  var statusEl = document.getElementById("live-status");

  // ---------------------------------------------------------------- dates (local time)
  var fmtTime = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
  var fmtDay = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  var fmtFull = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
  var fmtLong = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
  var fmtRel = typeof Intl.RelativeTimeFormat === "function"
    ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;

  function shortDate(d) {
    var now = new Date();
    if (d.toDateString() === now.toDateString()) return fmtTime.format(d);
    if (d.getFullYear() === now.getFullYear()) return fmtDay.format(d);
    return fmtFull.format(d);
  }

  function relative(d) {
    if (!fmtRel) return fmtLong.format(d);
    var s = Math.round((d.getTime() - Date.now()) / 1000);
    var a = Math.abs(s);
    if (a < 60) return fmtRel.format(s, "second");
    if (a < 3600) return fmtRel.format(Math.round(s / 60), "minute");
    if (a < 86400) return fmtRel.format(Math.round(s / 3600), "hour");
    return fmtRel.format(Math.round(s / 86400), "day");
  }

  function localizeTimes(root) {
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var t = times[i];
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      var kind = t.getAttribute("data-format");
      if (kind === "long") t.textContent = fmtLong.format(d);
      else if (kind === "relative") t.textContent = relative(d);
      else t.textContent = shortDate(d);
      t.title = fmtLong.format(d);
    }
  }

  localizeTimes(document);

  // ---------------------------------------------------------------- forms: no double submit
  // A form with data-busy disables its button while the request runs (Verify token now waits
  // for the provider) and says what is happening.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form || !form.getAttribute || form.getAttribute("data-busy") === null) return;
    var button = form.querySelector("button[type=submit], button:not([type])");
    if (!button) return;
    if (form.getAttribute("data-submitted") === "1") { e.preventDefault(); return; }
    form.setAttribute("data-submitted", "1");
    window.setTimeout(function () {
      button.disabled = true;
      button.textContent = form.getAttribute("data-busy") || button.textContent;
    }, 0);
  });

  if (!app) return;

  // ---------------------------------------------------------------- page state
  var accountId = app.getAttribute("data-account");
  var folderId = parseInt(app.getAttribute("data-folder") || "0", 10);
  var firstPage = app.getAttribute("data-first-page") === "1";
  var lastChange = parseInt(app.getAttribute("data-change") || "0", 10);
  var list = document.getElementById("message-list");
  var template = document.getElementById("row-template");

  function hasMore() { return app.getAttribute("data-more") === "1"; }

  function rowFor(id) {
    return list ? list.querySelector('li.msg[data-id="' + String(id) + '"]') : null;
  }

  function rowKey(li) {
    return [Date.parse(li.getAttribute("data-at")), parseInt(li.getAttribute("data-id"), 10)];
  }

  // Newest first: a is "newer" than b when its (time, id) is greater.
  function newer(a, b) { return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]); }

  function fillRow(li, ev) {
    var d = new Date(ev.received_at);
    li.setAttribute("data-id", String(ev.message_id));
    li.setAttribute("data-at", ev.received_at);
    li.classList.toggle("unread", !!ev.unread);
    li.querySelector(".msg-link").href =
      "/mailboxes/" + accountId + "/messages/" + ev.message_id + "?folder=" + folderId;
    li.querySelector(".msg-unread-label").textContent = ev.unread ? "Unread. " : "";
    var from = li.querySelector(".msg-from");
    from.textContent = ev.sender_name || ev.sender || "";
    from.title = ev.sender || "";
    li.querySelector(".msg-subject").textContent = ev.subject || "(no subject)";
    li.querySelector(".msg-snippet").textContent = ev.snippet || "";
    var t = li.querySelector(".msg-date");
    t.setAttribute("datetime", ev.received_at);
    t.textContent = shortDate(d);
    t.title = fmtLong.format(d);
  }

  function updateEmptyState() {
    var empty = document.getElementById("empty-state");
    if (empty && list) empty.hidden = list.children.length > 0;
  }

  function highlight(li) {
    li.classList.add("fresh");
    window.setTimeout(function () { li.classList.remove("fresh"); }, 1600);
  }

  function insertRow(ev) {
    if (!list || !template) return;
    var key = [Date.parse(ev.received_at), ev.message_id];
    var rows = list.children;
    if (!firstPage && rows.length && newer(key, rowKey(rows[0]))) return; // an earlier page's
    var before = null;
    for (var i = 0; i < rows.length; i++) {
      if (newer(key, rowKey(rows[i]))) { before = rows[i]; break; }
    }
    if (before === null && hasMore()) return; // older than this page: a later page's
    var li = template.content.firstElementChild.cloneNode(true);
    fillRow(li, ev);
    list.insertBefore(li, before);
    highlight(li);
    updateEmptyState();
    reportVisible(ev.message_id);
  }

  // Checkpoint 6 of the realtime test: a row that arrived live was rendered. The server keeps
  // it only while an administrator's test of this mailbox runs.
  function reportVisible(messageId) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (!meta) return;
    window.requestAnimationFrame(function () {
      var body = new URLSearchParams({ message_id: String(messageId) });
      fetch("/mailboxes/" + accountId + "/visible", {
        method: "POST", credentials: "same-origin", body: body,
        headers: { "X-CSRF-Token": meta.getAttribute("content") }
      }).catch(function () { /* best effort */ });
    });
  }

  function removeRow(li) {
    if (!li || li.classList.contains("leaving")) return;
    li.classList.add("leaving");
    window.setTimeout(function () {
      if (li.parentNode) li.parentNode.removeChild(li);
      updateEmptyState();
    }, 250);
  }

  function onChanged(ev) {
    var existing = rowFor(ev.message_id);
    var inFolder = (ev.folder_ids || []).indexOf(folderId) !== -1;
    if (!inFolder) { removeRow(existing); return; }
    if (existing) {
      var wasUnread = existing.classList.contains("unread");
      fillRow(existing, ev);
      if (wasUnread !== !!ev.unread) highlight(existing);
    } else {
      insertRow(ev);
    }
  }

  function updateCounts(folders) {
    var links = document.querySelectorAll("#folders a[data-folder-id]");
    for (var i = 0; i < links.length; i++) {
      var a = links[i];
      var c = folders[a.getAttribute("data-folder-id")];
      if (!c) continue;
      var showUnread = a.getAttribute("data-show-unread") === "1";
      a.setAttribute("data-total", String(c.total));
      a.setAttribute("data-unread", String(c.unread));
      a.querySelector(".folder-total").textContent = String(c.total);
      a.querySelector(".folder-unread").textContent = showUnread && c.unread ? String(c.unread) : "";
      a.classList.toggle("has-unread", showUnread && c.unread > 0);
    }
    var mine = folders[String(folderId)];
    var summary = document.getElementById("folder-summary");
    if (mine && summary) {
      summary.textContent = mine.total.toLocaleString() + " message" + (mine.total === 1 ? "" : "s") +
        (mine.unread ? " · " + mine.unread + " unread" : "");
    }
    if (mine && list) {
      document.title = document.title.replace(/^([^—(]*?)(\s\(\d+\))?(\s—)/, function (_, name, _n, dash) {
        return name + (mine.unread ? " (" + mine.unread + ")" : "") + dash;
      });
    }
  }

  // ---------------------------------------------------------------- reload from the server
  var reloading = null;
  var reloadAgain = false;

  function swap(doc, id) {
    var fresh = doc.getElementById(id);
    var here = document.getElementById(id);
    if (fresh && here) here.replaceWith(fresh);
    return fresh;
  }

  function reloadView() {
    if (reloading) { reloadAgain = true; return; }
    reloading = fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var freshApp = doc.getElementById("app");
        if (freshApp) {
          app.setAttribute("data-more", freshApp.getAttribute("data-more") || "0");
          var change = parseInt(freshApp.getAttribute("data-change") || "0", 10);
          if (change > lastChange) lastChange = change;
        }
        swap(doc, "folders");
        swap(doc, "folder-summary");
        swap(doc, "empty-state");
        var freshList = swap(doc, "message-list");
        if (freshList) list = freshList;
        localizeTimes(document);
      })
      .catch(function () { /* the next event or reconnect tries again */ })
      .then(function () {
        reloading = null;
        if (reloadAgain) { reloadAgain = false; reloadView(); }
      });
  }

  // ---------------------------------------------------------------- the socket
  var attempt = 0;
  var socket = null;

  function setStatus(state, text) {
    if (!statusEl) return;
    statusEl.setAttribute("data-state", state);
    statusEl.textContent = text;
  }

  function handle(ev) {
    if (ev.change_id && ev.change_id > lastChange) lastChange = ev.change_id;
    switch (ev.kind) {
      case "added":
      case "updated":
        onChanged(ev);
        break;
      case "removed":
        removeRow(rowFor(ev.message_id));
        break;
      case "counts":
        updateCounts(ev.folders || {});
        break;
      case "reload":
        reloadView();
        break;
      default:
        break; // "hello" and kinds from newer servers
    }
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    var url = scheme + "//" + window.location.host + "/ws/mailboxes/" + accountId +
      "?since=" + lastChange;
    setStatus(attempt ? "reconnecting" : "connecting", attempt ? "Reconnecting…" : "Connecting…");
    try {
      socket = new WebSocket(url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    socket.onopen = function () {
      attempt = 0;
      setStatus("live", "Live");
    };
    socket.onmessage = function (e) {
      var ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      handle(ev);
    };
    socket.onclose = function () {
      socket = null;
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    attempt += 1;
    var base = Math.min(30000, 1000 * Math.pow(2, attempt - 1));
    var delay = base / 2 + Math.random() * base / 2;
    setStatus("reconnecting", "Reconnecting…");
    window.setTimeout(connect, delay);
  }

  window.addEventListener("pagehide", function () {
    if (socket) { socket.onclose = null; socket.close(); }
  });

  // ---------------------------------------------------------------- keyboard: j / k
  document.addEventListener("keydown", function (e) {
    if (!list || e.altKey || e.ctrlKey || e.metaKey) return;
    var tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
    if (e.key !== "j" && e.key !== "k") return;
    var links = list.querySelectorAll(".msg-link");
    if (!links.length) return;
    var index = Array.prototype.indexOf.call(links, document.activeElement);
    var next = e.key === "j" ? Math.min(links.length - 1, index + 1) : Math.max(0, index - 1);
    links[next].focus();
    e.preventDefault();
  });

  connect();
})();
