/* Experiment form: show only the chosen strategy's hyperparameters, and the layer
   sizes only for the neural network. Without JavaScript every field stays visible. */
(function () {
  "use strict";
  var strategy = document.getElementById("id_strategy");
  var groups = document.querySelectorAll("[data-strategy]");
  function showParams() {
    groups.forEach(function (group) { group.hidden = group.getAttribute("data-strategy") !== strategy.value; });
  }
  if (strategy) { strategy.addEventListener("change", showParams); showParams(); }

  var hidden = document.getElementById("id_hidden");
  var kinds = document.querySelectorAll("input[name='model_kind']");
  function toggleHidden() {
    var logistic = document.querySelector("input[name='model_kind']:checked");
    if (hidden) { hidden.disabled = !!logistic && logistic.value === "logistic"; }
  }
  kinds.forEach(function (input) { input.addEventListener("change", toggleHidden); });
  toggleHidden();
})();
