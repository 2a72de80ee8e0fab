// siamese-search pages: drag and drop onto the upload areas, previews, the size check before an
// upload, re-running a search when its options change, the upload progress bar, a busy button.
// The forms work without it; this only makes them nicer.
"use strict";

var MAX_BYTES = Number(document.body.getAttribute("data-max-bytes")) || 0;
var MAX_SIZE = document.body.getAttribute("data-max-size") || "";

function isZip(file) {
  return /\.zip$/i.test(file.name) || file.type === "application/zip";
}

// The message next to a field, as the server would put it (one per field).
function showError(anchor, text) {
  var next = anchor.nextElementSibling;
  if (next && next.classList.contains("field-error") && next.hasAttribute("data-client")) {
    next.textContent = text;
    next.hidden = !text;
    return;
  }
  if (!text) return;
  var p = document.createElement("p");
  p.className = "field-error";
  p.setAttribute("role", "alert");
  p.setAttribute("data-client", "");
  p.textContent = text;
  anchor.insertAdjacentElement("afterend", p);
}

// Files over the server's limit are refused here, before a byte is sent.
function tooLarge(files) {
  for (var i = 0; i < files.length; i++) {
    if (MAX_BYTES && !isZip(files[i]) && files[i].size > MAX_BYTES) {
      return files[i].name + " is " + (files[i].size / 1e6).toFixed(1) + " MB: images can be at most " +
        MAX_SIZE + ". Choose a smaller file.";
    }
  }
  return "";
}

document.querySelectorAll("[data-dropzone]").forEach(function (zone) {
  var input = zone.querySelector("input[type=file]");
  var preview = zone.querySelector(".preview");
  var form = zone.closest("form");

  function show() {
    var files = input.files;
    if (!files || !files.length) return;
    var problem = tooLarge(files);
    showError(zone, problem);
    if (problem) {
      input.value = "";
      return;
    }
    zone.classList.add("has-file");
    var text = zone.querySelector(".dz-text");
    if (text) text.textContent = files.length === 1 ? files[0].name : files.length + " files";
    if (preview && files.length === 1 && !isZip(files[0])) {
      preview.src = URL.createObjectURL(files[0]);
      preview.hidden = false;
    }
    if (form.hasAttribute("data-autosubmit") && form.checkValidity()) submit(form);
  }

  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.add("over");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      show();
    }
  });
  input.addEventListener("change", show);
});

function submit(form) {
  if (form.requestSubmit) form.requestSubmit(); else form.submit();
}

// A search whose image is kept (or a gallery item) runs again when its options change.
document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
  form.querySelectorAll("[data-resubmit]").forEach(function (field) {
    field.addEventListener("change", function () {
      if (form.querySelector("input[name=kept_image], input[name=kept_image_a], input[name=item]")
          && form.checkValidity()) submit(form);
    });
  });
});

// Uploads with a progress bar: the form is sent by XMLHttpRequest, and its answer replaces the page.
document.querySelectorAll("form[data-upload]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    if (!window.FormData || !window.XMLHttpRequest) return;
    event.preventDefault();
    var box = form.querySelector(".upload-progress");
    var bar = box.querySelector("progress");
    var status = box.querySelector(".upload-status");
    box.hidden = false;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      bar.value = Math.round(100 * e.loaded / e.total);
      status.textContent = "Uploading… " + bar.value + "%";
    });
    xhr.upload.addEventListener("load", function () {
      bar.removeAttribute("value");  // indeterminate while the server adds them
      status.textContent = "Adding to the gallery…";
    });
    xhr.addEventListener("load", function () {
      document.open();
      document.write(xhr.responseText);
      document.close();
      window.scrollTo(0, 0);  // the report starts at the top, wherever the form was
    });
    xhr.addEventListener("error", function () {
      status.textContent = "The upload failed: the connection was lost. Try again.";
      busy(form, false);
    });
    xhr.send(new FormData(form));
  });
});

function busy(form, on) {
  var button = form.querySelector("button[type=submit]");
  if (!button) return;
  if (on) {
    button.setAttribute("data-label", button.textContent);
    button.disabled = true;
    button.textContent = "Working…";
  } else {
    button.disabled = false;
    button.textContent = button.getAttribute("data-label") || button.textContent;
  }
}

document.querySelectorAll("form").forEach(function (form) {
  form.addEventListener("submit", function () { busy(form, true); });
});

// Coming back to a page (the back button) must not leave its button stuck on "Working…".
window.addEventListener("pageshow", function () {
  document.querySelectorAll("button[type=submit][disabled]").forEach(function (button) {
    button.disabled = false;
    button.textContent = button.getAttribute("data-label") || button.textContent;
  });
});
