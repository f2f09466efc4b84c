"""The agent's polling loop: register, then train and evaluate what the server assigns.

Trains with the plan the server sends (``fedhealth.ml.sitework.SitePlan``, the one a
hosted worker uses) and the same core functions (``train_at_site``,
``evaluate_at_site``), so an agent site trains and evaluates exactly as a hosted worker. State
lives on the server: on restart the agent registers again (idempotent), is handed
the same assignments and re-claims an update it was training.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from fedhealth.ml.model import ModelConfig
from fedhealth.ml.schema import Schema, SchemaError
from fedhealth.ml.sitework import SitePlan, evaluate_at_site, privacy_spend, train_at_site
from fedhealth.ml.stats import Normalizer
from fedhealth.ml.weights_io import sha256_hex, weights_from_bytes, weights_to_bytes

from .client import ApiClient, ApiError, Unavailable
from .compare import ComparisonStore, SiteComparer
from .data import LocalData
from .ledger import AgentLedger, BudgetExceeded, fingerprint
from .policy import LocalPolicy, terms_sha256
from .secure import SecureSteps, SecureStore, site_dp_target

log = logging.getLogger("fedhealth.agent")


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Drop undefined (NaN) metrics: strict JSON has no NaN, and absent means undefined."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def _positive_value(schema: Any, fallback: Schema) -> int:
    try:
        return Schema.from_dict(schema).positive_value if schema else fallback.positive_value
    except SchemaError:
        return fallback.positive_value


class SiteAgent:
    """One site's agent. ``run()`` loops until stopped; ``run_once()`` does one pass."""

    def __init__(
        self,
        client: ApiClient,
        data: LocalData,
        *,
        name: str = "local.csv",
        poll_interval: float = 5.0,
        ledger: AgentLedger | None = None,
        policy: LocalPolicy | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.client, self.data, self.name = client, data, name
        self.poll_interval = poll_interval
        # The site's own privacy ledger and budget (None: a ledger that is never written,
        # so a DP round is refused rather than trained unaccounted).
        self.ledger = ledger
        self.rows = fingerprint(data.X, data.y)
        # The site's own policy over experiments (--consent-policy): checked before every
        # claim, whatever the server says.
        self.policy = policy
        self.dataset_id: int | None = None
        self.site = ""
        self._skipped: set[tuple[str, int]] = set()
        # Secure aggregation: round secrets and kept updates in the agent's own folder only.
        self.secure = SecureSteps(client, None if state_dir is None else SecureStore(state_dir))
        # The end-of-experiment comparison's models and records (None: no folder to keep
        # them in, so no comparison is measured).
        self.comparer = SiteComparer(
            client, data, None if state_dir is None else ComparisonStore(state_dir)
        )

    # -- registration ------------------------------------------------------------------

    def register(self) -> int:
        """Send the dataset summary (never rows); the same summary maps to the same id."""
        payload = self.data.registration(self.name)
        dataset = self.client.post_json("/agent/datasets/", payload)
        self.dataset_id, self.site = dataset["id"], dataset["site"]
        log.info(
            "registered dataset %s for site %s: %d rows, %.0f%% positive (summary only)",
            dataset["id"],
            self.site,
            payload["row_count"],
            100 * payload["positive_count"] / payload["row_count"],
        )
        return self.dataset_id

    # -- the loop ----------------------------------------------------------------------

    def run(self, *, once: bool = False, stop: threading.Event | None = None) -> int:
        """Register, then poll. Returns 0, or 1 if ``once`` and the server was unreachable."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                if self.dataset_id is None:
                    self.register()
                self.run_once()
            except Unavailable as exc:
                log.warning("server unavailable: %s", exc)
                if once:
                    return 1
            if once:
                return 0
            stop.wait(self.poll_interval)
        return 0

    def run_once(self) -> int:
        """Poll once and do every assignment. Returns how many were handled."""
        work = self.client.get_json("/agent/assignments/")
        self.site = work["site"]
        done = 0
        for item in work["training"]:
            done += self._guard(
                self.train_if_allowed,
                item,
                f"round {item['number']} of experiment {item['experiment']}",
            )
        for item in work.get("secure", []):
            done += self._guard(
                lambda it: self.secure.step(it, self.site),
                item,
                f"secure aggregation of round {item['number']} of experiment {item['experiment']}",
            )
        self.secure.forget_finished(
            {int(i["round"]) for i in [*work["training"], *work.get("secure", [])]}
        )
        for item in work["evaluations"]:
            key = ("eval", item["model"])
            if key not in self._skipped:
                done += self._guard(
                    self.evaluate,
                    item,
                    f"model v{item['version']} of experiment {item['experiment']}",
                )
        for item in work.get("comparisons", []):
            key = ("compare", item["experiment"])
            if key not in self._skipped:
                done += self._guard(
                    self.compare, item, f"comparison for experiment {item['experiment']}"
                )
        if not done:
            log.debug("no work")
        return done

    def _guard(self, step, item: dict[str, Any], what: str) -> int:
        try:
            step(item)
            return 1
        except ApiError as exc:
            # Refusals (a round closed meanwhile, a duplicate) are normal: log and go on.
            log.warning("%s: server refused: %s %s", what, exc, exc.errors or "")
            return 0

    # -- training ----------------------------------------------------------------------

    def train_if_allowed(self, item: dict[str, Any]) -> None:
        """Claim and train, unless the site's own policy refuses the experiment's terms:
        then report a failure (code ``site_policy``) with the reasons, and never claim."""
        refusals = self.refusals(item)
        if not refusals:
            self.train(item)
            return
        note = "refused by this site's policy: " + "; ".join(refusals)
        self.client.post_json(
            f"/agent/rounds/{item['round']}/failure/",
            {"reason": note[:2000], "code": "site_policy"},
        )
        log.error(
            "round %d of experiment %d: %s; reported as a failure",
            item["number"],
            item["experiment"],
            note,
        )

    def refusals(self, item: dict[str, Any]) -> list[str]:
        if self.policy is None:
            return []
        terms = item.get("terms")
        if isinstance(terms, dict) and terms_sha256(terms) != item.get("terms_sha256"):
            return ["the terms the server sent do not match their SHA-256"]
        return self.policy.refusals(terms)

    def train(self, item: dict[str, Any]) -> None:
        """Claim an update, train on the local split from the global model, upload it."""
        rid = item["round"]
        task = self.client.post_json(f"/agent/rounds/{rid}/claim/")
        log.info(
            "round %d of experiment %d: claimed (attempt %d)",
            task["number"],
            task["experiment"],
            task["attempts"],
        )
        if task["dataset"] != self.dataset_id:
            reason = (
                f"the local CSV no longer matches dataset {task['dataset']} the experiment was "
                f"set up with (now registered as {self.dataset_id})"
            )
            self.client.post_json(f"/agent/rounds/{rid}/failure/", {"reason": reason})
            log.error("round %d: %s; reported as a failure", task["number"], reason)
            return
        data, headers = self.client.get_bytes(f"/agent/rounds/{rid}/global-model/")
        weights = weights_from_bytes(data, expected_sha256=headers.get("X-Content-SHA256"))
        log.info(
            "round %d: downloaded global model v%s (%d bytes, sha256 %s)",
            task["number"],
            headers.get("X-Model-Version"),
            len(data),
            sha256_hex(data)[:12],
        )
        # The server's plan is the one a hosted worker trains with; train_at_site also
        # measures the local model on the held-out rows in the same call.
        plan = SitePlan.from_dict({**task, "round": task["number"], "site": self.site})
        split = self.data.split(self.site, test_fraction=plan.test_fraction, seed=plan.split_seed)
        spend = None
        if plan.privacy is not None:
            refusal = self._reserve_privacy(plan, split, task)
            if refusal is not None:
                code, note = refusal
                self.client.post_json(
                    f"/agent/rounds/{rid}/failure/", {"reason": note, "code": code}
                )
                log.error("round %d: %s; reported as a failure", task["number"], note)
                return
            spend = privacy_spend(plan, split)
        started = time.monotonic()
        try:
            result = train_at_site(plan, weights, split, spend=spend)
        except ValueError as exc:
            self.client.post_json(
                f"/agent/rounds/{rid}/failure/", {"reason": f"local training failed: {exc}"}
            )
            log.error("round %d: local training failed: %s", task["number"], exc)
            return
        local = result.metrics
        log.info(
            "round %d: trained on %d rows in %.1fs, loss %.4f, local test accuracy %.3f",
            task["number"],
            result.num_samples,
            time.monotonic() - started,
            result.loss,
            local["accuracy"],
        )
        if task.get("secure_aggregation"):  # the weights stay here until they leave masked
            refusal = self.secure.keep(
                rid, self.site, result, weights, task["number"], spend,
                site_dp=site_dp_target(item.get("terms")),
            )
            if refusal is not None:
                code, note = refusal
                self.client.post_json(
                    f"/agent/rounds/{rid}/failure/", {"reason": note, "code": code}
                )
                log.error("round %d: %s; reported as a failure", task["number"], note)
            return
        body = weights_to_bytes(result.weights)
        sha = sha256_hex(body)
        fields = {
            "sha256": sha,
            "num_samples": str(result.num_samples),
            "metrics": json.dumps(finite_metrics(local)),
        }
        if math.isfinite(result.loss):
            fields["loss"] = repr(float(result.loss))
        if spend is not None:
            # What this agent's own accountant recorded; the server records and checks it
            # but the budget was enforced here, before training.
            fields["privacy"] = json.dumps(spend.to_dict())
        self.client.post_form(
            f"/agent/rounds/{rid}/update/",
            fields,
            {"weights": ("update.safetensors", body, "application/octet-stream")},
        )
        log.info(
            "round %d: uploaded update (%d bytes, sha256 %s)", task["number"], len(body), sha[:12]
        )

    def _reserve_privacy(self, plan: SitePlan, split, task: dict[str, Any]) -> tuple[str, str] | None:
        """Derive this round's spend from the local rows, check it against the agent's own
        budget and record it before training. Returns ``(code, note)`` to refuse with."""
        if self.ledger is None:
            return (
                "privacy_settings",
                "the server asks for differentially private training but this agent has no "
                "privacy ledger (start it with --state-dir)",
            )
        try:
            spend = privacy_spend(plan, split)
        except ValueError as exc:
            return ("privacy_settings", f"privacy settings cannot be met here: {exc}")
        assert spend is not None
        try:
            total = self.ledger.reserve(self.rows, spend, experiment=int(task["experiment"]))
        except BudgetExceeded as exc:
            return ("privacy_budget", str(exc))
        log.info(
            "round %d: privacy spend recorded: noise %.3f, epsilon %.3f this experiment, "
            "%.3f on these rows in all (delta %.2g)",
            plan.round,
            spend.noise_multiplier,
            spend.epsilon_total,
            total,
            spend.delta,
        )
        return None

    # -- the end-of-experiment comparison ----------------------------------------------

    def compare(self, item: dict[str, Any]) -> None:
        """Alone / global / personalised on the local test rows, once per experiment;
        the models stay in the state folder, only the figures are sent."""
        experiment = item["experiment"]
        if self.comparer.store is None or item["dataset"] != self.dataset_id:
            self._skipped.add(("compare", experiment))
            log.warning(
                "experiment %d: no comparison (alone / global / personalised) measured: %s",
                experiment,
                "this agent has no state folder to keep the models in (start it with --state-dir)"
                if self.comparer.store is None
                else f"the experiment uses dataset {item['dataset']}, this CSV is dataset "
                f"{self.dataset_id}",
            )
            return
        try:
            self.comparer.step(item, self.site)
        except (ValueError, OSError) as exc:  # too few rows, a bad model file, a full disk
            self._skipped.add(("compare", experiment))
            log.error("experiment %d: the comparison could not be measured: %s", experiment, exc)

    # -- evaluation --------------------------------------------------------------------

    def evaluate(self, item: dict[str, Any]) -> None:
        """Score a global model version on the local test split; report figures only."""
        if item["dataset"] != self.dataset_id:
            self._skipped.add(("eval", item["model"]))
            log.warning(
                "model v%d of experiment %d: not evaluated, the experiment uses dataset %s, "
                "this CSV is dataset %s",
                item["version"],
                item["experiment"],
                item["dataset"],
                self.dataset_id,
            )
            return
        meta = self.client.get_json(f"/models/{item['model']}/")
        data, _ = self.client.get_bytes(f"/models/{item['model']}/weights/")
        weights = weights_from_bytes(data, expected_sha256=item["sha256"])
        split = self.data.split(self.site, test_fraction=item["test_fraction"], seed=item["seed"])
        metrics, curves = evaluate_at_site(
            ModelConfig.from_dict(meta["model_config"]),
            weights,
            Normalizer.from_dict(meta["normalizer"]),
            split,
            # The experiment's positive class (the version carries its schema); this
            # CSV's own schema when talking to a server that does not send it.
            positive=_positive_value(meta.get("schema"), self.data.schema),
            # The version's loss on this site's validation slice, as a hosted site
            # reports it: what the server selects the best version by.
            validation_fraction=float(item.get("validation_fraction") or 0.0),
            split_seed=item["seed"],
        )
        self.client.post_json(
            f"/agent/models/{item['model']}/evaluation/",
            {"metrics": finite_metrics(metrics), "curves": curves},
        )
        log.info(
            "model v%d of experiment %d: evaluated on %d local test rows, accuracy %.3f, auroc %.3f",
            item["version"],
            item["experiment"],
            len(split.y_test),
            metrics["accuracy"],
            metrics["auroc"],
        )
