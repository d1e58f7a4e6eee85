/* Webhooks pages: forms that ask first (rotating a secret, deleting an endpoint).
   A file of its own, as the Content-Security-Policy forbids inline script. */
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });
})();
