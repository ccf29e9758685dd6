// The index of a crack_tf report: renders window.CRACK_REPORT (report.js) one page at a time, with
// lazily loaded thumbnails; sorts and filters by verdict, score and name; keeps its state in the
// URL hash. #status gets data-total / data-matched / data-shown and, once the first page is
// painted, data-rendered-ms (performance.now()) and data-thumbs-ms (thumbnails on screen decoded).
(function () {
  "use strict";
  var R = window.CRACK_REPORT, entries = R.entries, $ = function (id) { return document.getElementById(id); };
  entries.forEach(function (e, i) { e.rank = i; });
  var DEFAULTS = { verdict: "all", min: "0", max: "1", q: "", sort: "severity", size: "50", page: "1" };
  var failedLast = function (f) {
    return function (a, b) {
      var fa = a.verdict === "failed", fb = b.verdict === "failed";
      return fa !== fb ? (fa ? 1 : -1) : (f(a, b) || a.rank - b.rank);
    };
  };
  var text = function (k) { return function (a, b) { return String(a[k] || "~").localeCompare(String(b[k] || "~")); }; };
  var SORTS = {
    severity: failedLast(function () { return 0; }),
    "score-desc": failedLast(function (a, b) { return b.p - a.p; }),
    "score-asc": failedLast(function (a, b) { return a.p - b.p; }),
    area: failedLast(function (a, b) { return b.share - a.share; }),
    boxes: failedLast(function (a, b) { return b.boxes - a.boxes; }),
    name: failedLast(text("name")),
    taken: failedLast(text("taken"))
  };
  var state = readHash(), first = true;

  function readHash() {
    var s = Object.assign({}, DEFAULTS);
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var kv = part.split("=");
      if (kv.length === 2 && kv[0] in DEFAULTS) s[kv[0]] = decodeURIComponent(kv[1]);
    });
    return s;
  }

  function writeHash() {
    var parts = Object.keys(DEFAULTS).filter(function (k) { return state[k] !== DEFAULTS[k]; })
      .map(function (k) { return k + "=" + encodeURIComponent(state[k]); });
    history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
  }

  function el(tag, cls, content) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (content !== undefined && content !== null) n.textContent = content;
    return n;
  }

  function matches(e) {
    if (state.verdict !== "all" && e.verdict !== state.verdict) return false;
    var lo = parseFloat(state.min), hi = parseFloat(state.max);
    if (e.p !== null && ((!isNaN(lo) && e.p < lo) || (!isNaN(hi) && e.p > hi))) return false;
    if (e.p === null && ((!isNaN(lo) && lo > 0) || (!isNaN(hi) && hi < 1))) return false;
    return !state.q || e.path.toLowerCase().indexOf(state.q.toLowerCase()) >= 0;
  }

  function row(e, n) {
    var tr = el("tr", "entry"), cells = [];
    tr.dataset.verdict = e.verdict;
    tr.dataset.score = e.p === null ? "" : e.p;
    for (var i = 0; i < 8; i++) cells.push(tr.appendChild(el("td")));
    cells[0].textContent = n;
    cells[1].className = "thumb";
    var name = el(e.page ? "a" : "span", "name", e.name);
    if (e.page) {
      var link = cells[1].appendChild(el("a"));
      link.href = e.page;
      var img = link.appendChild(el("img"));
      img.loading = "lazy";
      img.decoding = "async";
      img.width = e.tw;
      img.height = e.th;
      img.alt = e.name;
      img.src = e.thumb;
      name.href = e.page;
      cells[2].append(name, el("br"), e.w + "x" + e.h + " " + e.kind);
      cells[3].append(el("span", e.verdict === "crack" ? "crack" : "", e.verdict), el("br"), "score " + e.p.toFixed(3));
      cells[4].textContent = (100 * e.share).toFixed(2) + "%";
      cells[5].textContent = e.boxes;
      cells[6].textContent = e.taken || "-";
      cells[7].textContent = e.gps;
    } else {
      cells[1].textContent = "-";
      cells[2].append(name, el("br"), el("span", "reason", e.reason));
      cells[3].append(el("span", "failed", "failed"));
    }
    return tr;
  }

  function render() {
    var picked = entries.filter(matches).sort(SORTS[state.sort] || SORTS.severity);
    var size = Math.max(1, parseInt(state.size, 10) || 50), pages = Math.max(1, Math.ceil(picked.length / size));
    var page = Math.min(Math.max(1, parseInt(state.page, 10) || 1), pages);
    state.page = String(page);
    var shown = picked.slice((page - 1) * size, page * size), body = document.createDocumentFragment();
    shown.forEach(function (e, i) { body.appendChild(row(e, (page - 1) * size + i + 1)); });
    var tbody = $("entries").tBodies[0];
    tbody.replaceChildren(body);
    var status = $("status");
    status.dataset.total = entries.length;
    status.dataset.matched = picked.length;
    status.dataset.shown = shown.length;
    status.textContent = picked.length ? "Entries " + ((page - 1) * size + 1) + "-" + ((page - 1) * size + shown.length) +
      " of " + picked.length + (picked.length < entries.length ? " (filtered from " + entries.length + ")" : "") :
      "No entry matches the filter (" + entries.length + " in all).";
    document.querySelectorAll(".pager").forEach(function (p) {
      p.querySelector(".pages").textContent = "page " + page + " of " + pages;
      p.querySelector(".prev").disabled = page <= 1;
      p.querySelector(".next").disabled = page >= pages;
    });
    writeHash();
    if (first) {
      first = false;
      requestAnimationFrame(function () {
        setTimeout(function () {
          status.dataset.renderedMs = performance.now().toFixed(1);
          var visible = Array.prototype.filter.call(tbody.querySelectorAll("img"), function (img) {
            return img.getBoundingClientRect().top < innerHeight;
          });
          Promise.all(visible.map(function (img) { return img.decode().catch(function () {}); })).then(function () {
            status.dataset.thumbsMs = performance.now().toFixed(1);
          });
        }, 0);
      });
    }
  }

  ["verdict", "min", "max", "q", "sort", "size"].forEach(function (k) {
    var input = $(k);
    input.value = state[k];
    input.addEventListener(input.tagName === "SELECT" ? "change" : "input", function () {
      state[k] = input.value;
      state.page = "1";
      render();
    });
  });
  document.querySelectorAll(".pager").forEach(function (p) {
    p.querySelector(".prev").addEventListener("click", function () { state.page = String(+state.page - 1); render(); });
    p.querySelector(".next").addEventListener("click", function () { state.page = String(+state.page + 1); render(); });
  });
  render();
})();
