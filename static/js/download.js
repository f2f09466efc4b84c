/*
 * <a data-download-from="ID" download="name.csv" hidden> becomes a link to the text of
 * the <script type="application/json" id="ID"> block (a JSON string), as a file: the
 * text is already in the page, so nothing is fetched or stored again.
 */
(function () {
  "use strict";
  document.querySelectorAll("[data-download-from]").forEach(function (link) {
    var source = document.getElementById(link.getAttribute("data-download-from"));
    if (!source) { return; }
    var blob = new Blob([JSON.parse(source.textContent)], { type: "text/csv;charset=utf-8" });
    link.href = URL.createObjectURL(blob);
    link.hidden = false;
  });
})();
