// Live updates through Server-Sent Events: the server pushes run events and alerts as
// they reach the EVENTS stream; nothing here polls. EventSource reconnects by itself.
(function () {
  "use strict";
  var url = document.body.dataset.live;
  if (!url || !window.EventSource) { return; }
  var state = document.getElementById("live-state");
  var source = new EventSource(url);

  function fragment(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim(); // rendered and escaped by the server
    return template.content.firstElementChild;
  }

  source.addEventListener("open", function () {
    if (state) { state.hidden = false; state.textContent = "live"; state.title = "updates arrive as runs end"; }
  });
  source.addEventListener("error", function () {
    if (state) { state.hidden = false; state.textContent = "reconnecting…"; }
  });
  // Runs page: a finished run's row, inserted at the top (or replacing its old row).
  source.addEventListener("row", function (event) {
    var body = document.getElementById("runs-body");
    var row = fragment(event.data);
    if (!body || !row) { return; }
    var old = body.querySelector('tr[data-run-id="' + CSS.escape(row.dataset.runId) + '"]');
    if (old) { old.remove(); }
    row.classList.add("flash-new");
    body.insertBefore(row, body.firstChild);
    var none = document.getElementById("no-runs");
    if (none) { none.remove(); }
  });
  // Overview: the server re-renders the jobs table after each run event.
  source.addEventListener("jobs", function (event) {
    var jobs = document.getElementById("jobs");
    if (jobs) { jobs.innerHTML = event.data; }
  });
  // Run page: the run ended; show its final state.
  source.addEventListener("ended", function () { window.location.reload(); });
  source.addEventListener("alert", function (event) {
    var box = document.getElementById("alerts");
    var banner = fragment(event.data);
    if (box && banner) { box.insertBefore(banner, box.firstChild); }
  });
})();
