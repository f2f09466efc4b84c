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

  /* Record-level DP trains best with its own batch size and learning rate (the fields
     carry both defaults from the server). Switching DP on or off moves a field between
     them only while it still holds the other default: a typed value is kept. */
  var dpFields = document.querySelectorAll("[data-dp-default]");
  var modes = document.querySelectorAll("input[name='dp_mode']");
  function same(a, b) { return a !== "" && Number(a) === Number(b); }
  function applyDpDefaults() {
    var chosen = document.querySelector("input[name='dp_mode']:checked");
    var record = !!chosen && chosen.value === "record";
    dpFields.forEach(function (field) {
      var from = field.getAttribute(record ? "data-plain-default" : "data-dp-default");
      var to = field.getAttribute(record ? "data-dp-default" : "data-plain-default");
      if (same(field.value, from)) { field.value = to; }
    });
  }
  modes.forEach(function (input) { input.addEventListener("change", applyDpDefaults); });
})();
