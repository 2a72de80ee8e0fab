// siamese-search pages: drag and drop onto the upload areas, previews, and a busy button.
// The forms work without it; this only makes them nicer.
"use strict";

document.querySelectorAll("[data-dropzone]").forEach(function (zone) {
  var input = zone.querySelector("input[type=file]");
  var preview = zone.querySelector(".preview");
  var form = zone.closest("form");

  function show() {
    var file = input.files && input.files[0];
    if (!file) return;
    zone.classList.add("has-file");
    var text = zone.querySelector(".dz-text");
    if (text) text.textContent = file.name;
    if (preview) {
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
    }
    if (form.hasAttribute("data-autosubmit")) submit(form);
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

document.querySelectorAll("form").forEach(function (form) {
  form.addEventListener("submit", function () {
    var button = form.querySelector("button[type=submit]");
    if (button) {
      button.setAttribute("data-label", button.textContent);
      button.disabled = true;
      button.textContent = "Working…";
    }
  });
});

// Coming back to a page (the back button) must not leave its button stuck on "Working…".
window.addEventListener("pageshow", function () {
  document.querySelectorAll("button[type=submit][disabled]").forEach(function (button) {
    button.disabled = false;
    button.textContent = button.getAttribute("data-label") || button.textContent;
  });
});
