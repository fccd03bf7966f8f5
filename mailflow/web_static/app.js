/* mailflow admin: the template editor's live preview. Everything else works without script. */
(function () {
  "use strict";
  var form = document.getElementById("editor");
  if (!form) { return; }
  var url = form.getAttribute("data-preview");
  var state = document.getElementById("preview-state");
  var timer = null, sent = 0, shown = 0;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function renderProblems(data) {
    var box = document.getElementById("problems");
    box.textContent = "";
    if (data.problems.length === 0) {
      var ok = el("p", {"class": "ok"});
      ok.appendChild(document.createTextNode("No problems: "));
      ok.appendChild(el("code", {}, "templates check"));
      ok.appendChild(document.createTextNode(" passes with this text."));
      box.appendChild(ok);
      return;
    }
    var wrap = el("div", {"class": "error"});
    var n = data.problems.length;
    var head = el("p");
    head.appendChild(el("strong", {}, n + (n === 1 ? " problem" : " problems")));
    head.appendChild(document.createTextNode(", as "));
    head.appendChild(el("code", {}, "mailflow templates check"));
    head.appendChild(document.createTextNode(" reports them. Nothing is saved until they are fixed."));
    wrap.appendChild(head);
    var list = el("ul");
    data.problems.forEach(function (p) {
      var li = el("li");
      li.appendChild(el("code", {"class": "problem"}, p.text));
      if (p.part && p.line) {
        li.appendChild(document.createTextNode(" "));
        li.appendChild(el("button", {"type": "button", "class": "link goto", "data-part": p.part,
          "data-line": String(p.line)}, "Go to " + p.label + ", line " + p.line));
      }
      list.appendChild(li);
    });
    wrap.appendChild(list);
    box.appendChild(wrap);
  }

  function renderPreviews(data) {
    var box = document.getElementById("previews");
    var open = {};
    box.querySelectorAll("details.variant").forEach(function (d, i) { open[i] = d.open; });
    box.textContent = "";
    data.previews.forEach(function (v, i) {
      var d = el("details", {"class": "variant"});
      d.open = (i in open) ? open[i] : i === 0;
      d.appendChild(el("summary", {}, "Sample: " + v.label));
      if (v.error) {
        d.appendChild(el("p", {"class": "error"}, v.error));
      } else {
        var subject = el("p", {"class": "subject"});
        subject.appendChild(el("span", {"class": "muted"}, "Subject:"));
        subject.appendChild(document.createTextNode(" "));
        subject.appendChild(el("span", {"class": "subject-text"}, v.subject));
        d.appendChild(subject);
        d.appendChild(el("h3", {"class": "sr-only"}, "Text version (" + v.label + ")"));
        d.appendChild(el("pre", {"class": "mailtext"}, v.text));
        d.appendChild(el("h3", {"class": "sr-only"}, "HTML version (" + v.label + ")"));
        var frame = el("iframe", {"class": "mailhtml", "sandbox": "",
          "title": "HTML version, sample " + v.label});
        frame.srcdoc = v.html;
        d.appendChild(frame);
      }
      box.appendChild(d);
    });
  }

  function refresh() {
    var mine = ++sent;
    state.textContent = "updating…";
    fetch(url, {method: "POST", body: new FormData(form), credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (data) {
        if (mine < shown) { return; }  // an older answer arriving late
        shown = mine;
        if (data.error) { state.textContent = data.error; return; }
        renderProblems(data);
        renderPreviews(data);
        state.textContent = data.ok ? "up to date" : "up to date, with problems";
        form.setAttribute("data-updated", String(mine));
      })
      .catch(function () { state.textContent = "preview unavailable"; });
  }

  form.addEventListener("input", function (e) {
    if (e.target.tagName !== "TEXTAREA") { return; }
    clearTimeout(timer);
    timer = setTimeout(refresh, 350);
  });

  document.addEventListener("click", function (e) {
    var b = e.target.closest ? e.target.closest("button.goto") : null;
    if (!b) { return; }
    var area = document.getElementById("part-" + b.getAttribute("data-part"));
    var line = parseInt(b.getAttribute("data-line"), 10);
    var lines = area.value.split("\n");
    var start = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) { start += lines[i].length + 1; }
    var end = start + (lines[line - 1] || "").length;
    area.focus();
    area.setSelectionRange(start, end);
  });
})();
