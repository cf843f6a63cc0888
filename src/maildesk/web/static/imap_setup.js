// MailDesk: the Add IMAP mailbox form tests a server in place (the typed password stays in its
// field). Without script the same buttons post the form and the page comes back with the result.
(function () {
  "use strict";
  var form = document.getElementById("imap-form");
  var results = document.getElementById("check-results");
  if (!form || !results || !window.fetch || !window.FormData) return;

  function line(tag, cls, text) {
    var el = document.createElement(tag);
    if (cls) el.className = cls;
    if (text) el.textContent = text;
    return el;
  }

  // A result replaces the earlier one of the same server; the other server's result stays.
  function show(checks, error) {
    var old = results.querySelectorAll(".flash");
    for (var i = 0; i < old.length; i++) results.removeChild(old[i]);
    if (error) {
      var p = line("p", "flash flash-error", error);
      p.setAttribute("role", "alert");
      results.appendChild(p);
    }
    checks.forEach(function (c) {
      var earlier = results.querySelector('.check-result[data-which="' + c.which + '"]');
      if (earlier) results.removeChild(earlier);
      var box = line("div", "check-result " + (c.ok ? "check-ok" : "check-failed"));
      box.setAttribute("data-which", c.which);
      box.setAttribute("data-ok", c.ok ? "true" : "false");
      box.setAttribute("data-stage", c.stage);
      var head = line("p", "check-head");
      head.appendChild(line("strong", "", c.title));
      head.appendChild(document.createTextNode(" "));
      head.appendChild(line("span", "muted", c.server));
      head.appendChild(document.createTextNode(" "));
      head.appendChild(line("span", "badge check-stage " + (c.ok ? "rt-active" : "rt-error"),
                            c.ok ? "OK" : "Failed at " + c.stage.toUpperCase()));
      box.appendChild(head);
      box.appendChild(line("p", "check-line", c.line));
      (c.warnings || []).forEach(function (w) {
        box.appendChild(line("p", "small check-warning", "Warning: " + w));
      });
      if (c.which === "incoming") results.insertBefore(box, results.firstChild);
      else results.appendChild(box);
    });
    if (results.scrollIntoView) results.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  form.addEventListener("click", function (e) {
    var button = e.target && e.target.closest ? e.target.closest("button[data-test]") : null;
    if (!button) return;
    if (typeof form.reportValidity === "function" && !form.reportValidity()) return;
    e.preventDefault();
    var data = new FormData(form);
    data.set("test", button.getAttribute("data-test"));
    var label = button.textContent;
    button.disabled = true;
    button.textContent = "Testing…";
    results.setAttribute("aria-busy", "true");
    fetch(button.getAttribute("formaction"), {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (response) {
      return response.json().then(function (body) { return { ok: response.ok, body: body }; });
    }).then(function (answer) {
      show(answer.body.checks || [], answer.ok ? "" : (answer.body.error || "The test failed."));
    }).catch(function () {
      show([], "MailDesk could not be reached; try again.");
    }).then(function () {
      button.disabled = false;
      button.textContent = label;
      results.removeAttribute("aria-busy");
    });
  });
})();
