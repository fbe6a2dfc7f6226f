// Live updates through Server-Sent Events: the server pushes run events and alerts as
// they reach the EVENTS stream; nothing here polls. Every event carries its EVENTS
// sequence as its id: the page's URL starts the stream after the sequence the page was
// rendered at, EventSource sends the last id it got (Last-Event-ID) when it reconnects,
// and the server sends what was missed in between, each event once.
(function () {
  "use strict";
  var url = document.body.dataset.live;
  if (!url || !window.EventSource) { return; }
  var state = document.getElementById("live-state");
  var lastId = null;

  function fragment(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim(); // rendered and escaped by the server
    return template.content.firstElementChild;
  }

  function tracked(handler) {
    return function (event) {
      if (event.lastEventId) { lastId = event.lastEventId; }
      handler(event);
    };
  }

  function resumeUrl() {
    // A stream the browser gave up (an error answer, e.g. while the dashboard restarts) is
    // opened again from the last id this page saw.
    return lastId === null ? url : url.replace(/([?&])last_event_id=\d*/, "$1last_event_id=" + lastId);
  }

  function connect(target) {
    var source = new EventSource(target);
    source.addEventListener("open", function () {
      if (state) { state.hidden = false; state.textContent = "live"; state.title = "updates arrive as runs end"; }
    });
    source.addEventListener("error", function () {
      if (state) { state.hidden = false; state.textContent = "reconnecting…"; }
      if (source.readyState === EventSource.CLOSED) {
        window.setTimeout(function () { connect(resumeUrl()); }, 2000);
      }
    });
    // Runs page: a finished run's row, inserted at the top (or replacing its old row).
    source.addEventListener("row", tracked(function (event) {
      var body = document.getElementById("runs-body");
      var row = fragment(event.data);
      if (!body || !row) { return; }
      var old = body.querySelector('tr[data-run-id="' + CSS.escape(row.dataset.runId) + '"]');
      if (old) { old.remove(); }
      row.classList.add("flash-new");
      body.insertBefore(row, body.firstChild);
      var none = document.getElementById("no-runs");
      if (none) { none.remove(); }
    }));
    // Overview: the server re-renders the jobs table after each run event.
    source.addEventListener("jobs", tracked(function (event) {
      var jobs = document.getElementById("jobs");
      if (jobs) { jobs.innerHTML = event.data; }
    }));
    // Run page: the run ended; show its final state.
    source.addEventListener("ended", tracked(function () { window.location.reload(); }));
    // More was missed than the server sends again: a fresh page is the whole truth.
    source.addEventListener("reset", function () { window.location.reload(); });
    source.addEventListener("alert", tracked(function (event) {
      var box = document.getElementById("alerts");
      var banner = fragment(event.data);
      if (box && banner) { box.insertBefore(banner, box.firstChild); }
    }));
  }

  connect(url);
})();
