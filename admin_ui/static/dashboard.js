/* Herald dashboard: copy-to-clipboard buttons and error toasts for htmx requests.
   Loaded as a file (no inline script) so the Content-Security-Policy can forbid inline code. */
(function () {
  "use strict";

  function toast(message, kind) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var item = document.createElement("div");
    item.className = "toast toast-" + (kind || "error");
    item.setAttribute("role", kind === "success" ? "status" : "alert");
    item.textContent = message;
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, 6000);
  }

  /* The clipboard API needs a secure context; elsewhere fall back to selecting the text. */
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      var copied = document.execCommand("copy");
      area.remove();
      if (copied) { resolve(); } else { reject(new Error("copy refused")); }
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    copyText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
      button.classList.add("is-copied");
      setTimeout(function () {
        button.textContent = "Copy";
        button.classList.remove("is-copied");
      }, 2000);
    }, function () {
      toast("Could not copy: select the key and copy it by hand.");
    });
  });

  /* The server's error pages carry their message in .error-message; problem+json in detail. */
  function messageOf(xhr) {
    var body = xhr.responseText || "";
    var type = xhr.getResponseHeader("Content-Type") || "";
    try {
      if (type.indexOf("json") !== -1) return JSON.parse(body).detail;
      var found = new DOMParser().parseFromString(body, "text/html").querySelector(".error-message");
      if (found) return found.textContent.trim();
    } catch (ignored) { /* fall through to the generic message */ }
    return null;
  }

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    toast(messageOf(xhr) || "The request failed (" + xhr.status + "). Please try again.");
  });

  document.addEventListener("htmx:sendError", function () {
    toast("Herald could not be reached. Check your connection and try again.");
  });
})();
