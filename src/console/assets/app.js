// bursar console: progressive enhancement only (every page works without it).
// Loaded from this origin under a strict CSP: no inline script anywhere.
"use strict";

document.addEventListener("click", function (ev) {
  var btn = ev.target.closest("[data-copy]");
  if (!btn) return;
  var el = document.getElementById(btn.getAttribute("data-copy"));
  if (!el) return;
  var text = el.textContent.trim();
  var done = function () {
    var old = btn.textContent;
    btn.textContent = "Copied";
    btn.classList.add("copied");
    setTimeout(function () { btn.textContent = old; btn.classList.remove("copied"); }, 1600);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { selectText(el); });
  } else {
    selectText(el);
    try { if (document.execCommand("copy")) done(); } catch (e) { /* the text stays selected */ }
  }
});

function selectText(el) {
  var range = document.createRange();
  range.selectNodeContents(el);
  var sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

// Ask before destructive changes (forms with data-confirm).
document.addEventListener("submit", function (ev) {
  var form = ev.target;
  var msg = form.getAttribute && form.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) ev.preventDefault();
});

// Usage filters: custom dates only when the range is "custom".
(function () {
  var range = document.getElementById("range");
  if (!range) return;
  var custom = document.querySelectorAll("[data-show-when-range]");
  var sync = function () {
    custom.forEach(function (el) {
      el.hidden = range.value !== el.getAttribute("data-show-when-range");
    });
  };
  range.addEventListener("change", sync);
  sync();
})();
