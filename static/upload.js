// Upload page: send the form with a progress bar, then follow the job.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  var statusBox = document.getElementById("upload-status");

  function fillSubjects() {
    var list = document.getElementById("subjects");
    var project = document.getElementById("project");
    if (!list || !project) return;
    list.innerHTML = "";
    (window.SCANYARD_SUBJECTS[project.value] || []).forEach(function (label) {
      var option = document.createElement("option");
      option.value = label;
      list.appendChild(option);
    });
  }

  function follow(apiUrl, onDone) {
    var bar = document.getElementById("bar");
    var counts = document.getElementById("counts") || document.getElementById("percent");
    var status = document.getElementById("status") || document.getElementById("phase");
    function poll() {
      fetch(apiUrl, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (u) {
          status.textContent = u.status;
          if (u.files_total) {
            bar.max = u.files_total;
            bar.value = u.files_read;
            counts.textContent = u.files_read + " of " + u.files_total + " files read";
          }
          if (u.status === "DONE" || u.status === "FAILED") { onDone(u); return; }
          setTimeout(poll, 1000);
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    poll();
  }

  if (form) {
    document.getElementById("project").addEventListener("change", fillSubjects);
    fillSubjects();
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var box = document.getElementById("progress");
      var bar = document.getElementById("bar");
      var percent = document.getElementById("percent");
      var phase = document.getElementById("phase");
      var result = document.getElementById("result");
      var xhr = new XMLHttpRequest();
      box.hidden = false;
      result.textContent = "";
      form.querySelector("button").disabled = true;
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        var p = Math.floor(100 * e.loaded / e.total);
        bar.max = 100;
        bar.value = p;
        percent.textContent = p + "%";
      });
      xhr.addEventListener("load", function () {
        var body = {};
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = {error: "The server answered " + xhr.status + "."}; }
        if (xhr.status >= 400) {
          phase.textContent = "Upload refused";
          result.textContent = body.error || ("The server answered " + xhr.status + ".");
          result.className = "flash error";
          form.querySelector("button").disabled = false;
          return;
        }
        phase.textContent = "Uploaded; reading files…";
        follow(body.api, function () { window.location = body.url; });
      });
      xhr.addEventListener("error", function () {
        phase.textContent = "The upload was interrupted.";
        form.querySelector("button").disabled = false;
      });
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.send(new FormData(form));
    });
  }

  if (statusBox) {
    var st = document.getElementById("status").textContent.trim();
    if (st !== "DONE" && st !== "FAILED") {
      follow(statusBox.dataset.api, function () { window.location.reload(); });
    }
  }
})();
