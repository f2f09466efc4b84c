/* Forms marked data-confirm ask before submitting (delegated: live fragments are re-rendered). */
document.addEventListener("submit", function (event) {
  "use strict";
  var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) { event.preventDefault(); }
});
