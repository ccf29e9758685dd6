// The detail page of a crack_tf report: overlay / photo / side-by-side view (kept in the URL hash and
// carried to the previous / next photo), box visibility, overlay opacity, the box under the pointer
// highlighted in the picture and the table, and the arrow keys for the previous / next photo.
(function () {
  "use strict";
  var stages = document.getElementById("stages"), buttons = document.querySelectorAll("[data-view]:not(#stages)");
  function setView(view) {
    stages.dataset.view = view;
    buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.view === view)); });
    history.replaceState(null, "", "#view=" + view);
    document.querySelectorAll("nav a.prev, nav a.next").forEach(function (a) {
      a.href = a.getAttribute("href").split("#")[0] + "#view=" + view;
    });
  }
  buttons.forEach(function (b) { b.addEventListener("click", function () { setView(b.dataset.view); }); });
  var fromHash = /view=(\w+)/.exec(location.hash);
  setView(fromHash && document.querySelector("button[data-view=" + fromHash[1] + "]") ? fromHash[1] : "overlay");
  document.getElementById("show-boxes").addEventListener("change", function (ev) {
    document.body.classList.toggle("hide-boxes", !ev.target.checked);
  });
  document.getElementById("opacity").addEventListener("input", function (ev) {
    document.querySelectorAll("img.heat").forEach(function (img) { img.style.opacity = ev.target.value / 100; });
  });
  function highlight(n, on) {
    document.querySelectorAll("[data-box='" + n + "']").forEach(function (x) { x.classList.toggle("hover", on); });
  }
  document.querySelectorAll("[data-box]").forEach(function (x) {
    x.addEventListener("mouseenter", function () { highlight(x.dataset.box, true); });
    x.addEventListener("mouseleave", function () { highlight(x.dataset.box, false); });
  });
  document.addEventListener("keydown", function (ev) {
    var which = { ArrowLeft: "prev", ArrowRight: "next" }[ev.key];
    var a = which && ev.target.tagName !== "INPUT" && document.querySelector("nav a." + which);
    if (a) location.href = a.href;
  });
})();
