/* Herald dashboard, template editor: locale and channel tabs, and errors pointed at their
   line. The preview itself is htmx's (hx-post on the form, debounced); switching a tab
   changes the hidden preview_channel / preview_locale inputs and fires an input event,
   which re-renders the preview for the new tab. */
(function () {
  "use strict";

  function editor() { return document.getElementById("template-editor"); }

  function showPanel(form) {
    var channel = form.querySelector("#preview-channel").value;
    var locale = form.querySelector("#preview-locale").value;
    form.querySelectorAll(".channel-panel").forEach(function (panel) {
      var shown = panel.getAttribute("data-panel-channel") === channel &&
        panel.getAttribute("data-panel-locale") === locale;
      panel.hidden = !shown;
    });
    form.querySelectorAll("[data-channel-tab]").forEach(function (tab) {
      var on = tab.getAttribute("data-channel-tab") === channel;
      tab.classList.toggle("is-active", on);
      tab.setAttribute("aria-selected", on ? "true" : "false");
    });
    form.querySelectorAll("[data-locale-tab]").forEach(function (tab) {
      var on = tab.getAttribute("data-locale-tab") === locale;
      tab.classList.toggle("is-active", on);
      tab.setAttribute("aria-selected", on ? "true" : "false");
    });
  }

  function select(form, name, value) {
    var input = form.querySelector(name);
    if (input.value === value) return;
    input.value = value;
    showPanel(form);
    input.dispatchEvent(new Event("input", { bubbles: true }));
  }

  document.addEventListener("click", function (event) {
    var form = editor();
    if (!form) return;
    var channelTab = event.target.closest("[data-channel-tab]");
    if (channelTab) {
      select(form, "#preview-channel", channelTab.getAttribute("data-channel-tab"));
      return;
    }
    var localeTab = event.target.closest("[data-locale-tab]");
    if (localeTab) {
      select(form, "#preview-locale", localeTab.getAttribute("data-locale-tab"));
      return;
    }
    var go = event.target.closest("[data-goto-field]");
    if (go) goTo(form, go.getAttribute("data-goto-field"), parseInt(go.getAttribute("data-goto-line"), 10));
  });

  /* Open the field's tab, focus it and select the line the error is on. */
  function goTo(form, name, line) {
    var field = form.querySelector('[name="' + CSS.escape(name) + '"]');
    if (!field) return;
    var panel = field.closest(".channel-panel");
    if (panel) {
      form.querySelector("#preview-locale").value = panel.getAttribute("data-panel-locale");
      form.querySelector("#preview-channel").value = panel.getAttribute("data-panel-channel");
      showPanel(form);
    }
    field.focus();
    if (line > 0 && typeof field.setSelectionRange === "function") {
      var lines = field.value.split("\n");
      var start = 0;
      for (var i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
      var end = start + (lines[line - 1] || "").length;
      field.setSelectionRange(start, end);
    }
  }

  /* Mark the fields the latest preview or save named, and only those. */
  function markErrors(container) {
    var form = editor();
    if (!form) return;
    var named = {};
    container.querySelectorAll("[data-error-field]").forEach(function (error) {
      named[error.getAttribute("data-error-field")] = error.getAttribute("data-error-line") || "";
    });
    form.querySelectorAll(".source-field").forEach(function (field) {
      var name = field.getAttribute("data-field");
      var hit = Object.prototype.hasOwnProperty.call(named, name);
      field.classList.toggle("has-error", hit);
      var control = field.querySelector("input, textarea");
      if (control) {
        if (hit) control.setAttribute("aria-invalid", "true");
        else control.removeAttribute("aria-invalid");
      }
    });
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (target && (target.id === "preview" || target.id === "save-status")) markErrors(target);
  });
})();
