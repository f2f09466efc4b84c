"""The agent's side of secure aggregation (docs/secure-aggregation.md), on the hospital's machine.

In a secure experiment the agent never uploads its weights. After training it checks its
update itself (the server can no longer check one update), keeps it with the global model
it started from in its state folder, and reports only its figures (``trained/``). When
the round closes, the server asks each site for the protocol's steps; the agent takes each
with the core's ``site_step`` and posts the message. Its round secrets (two X25519 private
keys, the self-mask seed, the shares other sites sent it) live only in memory and in
``<state-dir>/secagg/`` (folder 0700, files 0600), written and fsynced *before* the message
is posted, so a killed agent restarts at the same step and resends the same bytes, never a
new computation. They are deleted when the round is over.

An honest agent refuses, rather than answers, a task that breaks the protocol: a step out
of order, a task for another round, shares that do not authenticate, and a second unmask
request that differs from the one it answered (it could reveal both a site's self-mask share
and its mask-key share), and an unmask request whose survivor list is not the one it signed
or lacks t valid signatures over it (Bonawitz's ConsistencyCheck: ``secagg_inconsistent``).
Other sites appear only by per-round pseudonyms (``protocol_id``), never by name.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.ml.privacy import DEFAULT_SITE_DELTA, checked_share_request, secure_site_input
from fedhealth.ml.secagg import SecAggError
from fedhealth.ml.secagg.sitestep import protocol_range, site_step
from fedhealth.ml.strategies.checks import update_problem
from fedhealth.ml.types import Update, Weights
from fedhealth.ml.weights_io import weights_from_bytes, weights_to_bytes, write_atomic

from .client import ApiClient, ApiError

log = logging.getLogger("fedhealth.agent")

# The agent endpoint of each phase's message.
ENDPOINT = {
    "advertise": "advertise",
    "share": "shares",
    "masked": "masked",
    "consistency": "consistency",
    "unmask": "unmask",
}
OVER = ("done", "failed", "over")


def site_dp_target(terms: Any) -> dict[str, Any] | None:
    """The site-level DP target of an experiment's terms (what the site agreed to):
    ``{"epsilon", "delta", "rounds"}``, or None when the terms are not site-level DP."""
    privacy = terms.get("privacy") if isinstance(terms, dict) else None
    if not isinstance(privacy, dict) or privacy.get("mode") != "site":
        return None
    delta = privacy.get("delta")
    return {
        "epsilon": privacy.get("epsilon"),
        "delta": DEFAULT_SITE_DELTA if delta is None else delta,
        "rounds": terms.get("rounds"),
    }


def noised_input(
    saved: dict[str, Any], request: Any, extra: dict[str, Any]
) -> dict[str, Any]:
    """The masked step's input under site-level DP: the clipped change plus this agent's
    noise share (``secure_site_input``, the core function hosted sites use), from the
    operating system's randomness, as ``reference + share`` with weight 1.

    The server's request (z, S, t) is checked first against the target of the terms this
    site trained under, at sampling rate 1, and against the threshold and range of the
    roster this site shared its secrets under (``checked_share_request``). ValueError
    (the reason) when the request is missing, asks for less noise, or does not match."""
    target = saved.get("site_dp")
    if target is None:
        raise ValueError(
            "the server asks for a site-level DP noise share, but the terms this site trained "
            "under are not site-level DP"
        )
    if request is None:
        raise ValueError(
            "the terms this site trained under are site-level DP, but the server's task asks "
            "for no noise share: the update would leave this site without its noise"
        )
    protocol = protocol_range(saved.get("protocol"))
    if protocol is None:
        raise ValueError("no roster saved for this round: its threshold is unknown here")
    threshold, coordinate_bound = protocol
    try:
        epsilon, delta, rounds = (
            float(target["epsilon"]),
            float(target["delta"]),
            int(target["rounds"]),
        )
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"the terms' site-level DP target is not usable: {target!r}") from None
    z, clip = checked_share_request(
        request,
        epsilon=epsilon,
        delta=delta,
        rounds=rounds,
        threshold=threshold,
        coordinate_bound=coordinate_bound,
    )
    noisy = secure_site_input(
        extra["weights"],
        extra["reference"],
        clip_norm=clip,
        noise_multiplier=z,
        threshold=threshold,
        rng=np.random.default_rng(),  # the operating system's entropy, never a replayable seed
    )
    log.info(
        "site-level DP: clipped this site's change to %g and added its noise share "
        "(multiplier %.4g, threshold %d) before masking",
        clip,
        z,
        threshold,
    )
    return {**extra, "weights": noisy, "num_samples": 1}


class SecureStore:
    """One file set per round in ``<folder>/secagg/``: the update, the global model it was
    trained from, and the protocol state (JSON; holds private keys)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder) / "secagg"

    def _path(self, round_id: int, what: str) -> Path:
        return self.folder / f"r{int(round_id)}-{what}"

    def _write(self, path: Path, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        write_atomic(path, data)  # 0600; a crash leaves the old file or the new one, never half

    def keep(
        self,
        round_id: int,
        weights: Weights,
        reference: Weights,
        num_samples: int,
        site_dp: dict[str, Any] | None = None,
    ) -> None:
        self._write(self._path(round_id, "update.safetensors"), weights_to_bytes(weights))
        self._write(self._path(round_id, "reference.safetensors"), weights_to_bytes(reference))
        state: dict[str, Any] = {"num_samples": num_samples, "protocol": None}
        if site_dp is not None:
            state["site_dp"] = site_dp
        self.save(round_id, state)

    def load(self, round_id: int) -> dict[str, Any] | None:
        path = self._path(round_id, "state.json")
        return json.loads(path.read_bytes()) if path.exists() else None

    def save(self, round_id: int, state: dict[str, Any]) -> None:
        self._write(self._path(round_id, "state.json"), json.dumps(state).encode())

    def weights(self, round_id: int, what: str) -> Weights:
        return weights_from_bytes(self._path(round_id, f"{what}.safetensors").read_bytes())

    def rounds(self) -> list[int]:
        if not self.folder.exists():
            return []
        return sorted({int(p.name[1:].split("-")[0]) for p in self.folder.glob("r*-state.json")})

    def forget(self, round_id: int) -> None:
        for what in ("update.safetensors", "reference.safetensors", "state.json"):
            self._path(round_id, what).unlink(missing_ok=True)


class SecureSteps:
    """What the agent loop calls for secure rounds."""

    def __init__(self, client: ApiClient, store: SecureStore | None) -> None:
        self.client, self.store = client, store
        self._refused: set[tuple[int, str]] = set()

    def keep(
        self,
        round_id: int,
        site: str,
        result: Any,
        reference: Weights,
        number: int,
        spend: Any = None,
        site_dp: dict[str, Any] | None = None,
    ) -> tuple[str, str] | None:
        """After training: check the update here, keep it, report the figures only (with
        ``spend``, the round's record-level DP spend from this agent's own accountant, as a
        plain round's upload carries it). ``site_dp``: the site-level DP target of the terms
        this site trained under (``site_dp_target``), kept to check the noise request
        against at the masked step. Returns ``(code, note)`` to report as a failure."""
        if self.store is None:
            return (
                "site_reported",
                "secure aggregation needs the agent's state folder (--state-dir)",
            )
        problem = update_problem(Update(result.weights, result.num_samples, site), reference)
        if problem is not None:
            return ("site_reported", f"the trained update is not valid: {problem.reason}")
        self.store.keep(round_id, result.weights, reference, result.num_samples, site_dp=site_dp)
        metrics = {k: float(v) for k, v in result.metrics.items() if math.isfinite(v)}
        body: dict[str, Any] = {"num_samples": result.num_samples, "metrics": metrics}
        if math.isfinite(result.loss):
            body["loss"] = float(result.loss)
        if spend is not None:
            body["privacy"] = spend.to_dict()
        self.client.post_json(f"/agent/rounds/{round_id}/trained/", body)
        log.info(
            "round %d: trained for secure aggregation; the update stays here (%s), only its "
            "figures were reported",
            number,
            self.store.folder,
        )
        return None

    def step(self, item: dict[str, Any], site: str) -> None:
        """Take this site's step of the round's open phase, if it owes one."""
        rid = int(item["round"])
        info = self.client.get_json(f"/agent/rounds/{rid}/secure/")
        task = info.get("task")
        if task is None or self.store is None:
            return
        phase = task.get("phase")
        if (rid, phase) in self._refused:
            return
        saved = self.store.load(rid)
        if saved is None:
            log.error(
                "round %d: no saved secure-aggregation state here; this site will count as dropped",
                rid,
            )
            self._refused.add((rid, phase))
            return
        task = dict(task)
        request = task.pop("site_dp", None)  # not part of the protocol's task (its digest)
        extra: dict[str, Any] = {}
        if phase == "masked":
            extra = {
                "weights": self.store.weights(rid, "update"),
                "reference": self.store.weights(rid, "reference"),
                "num_samples": saved["num_samples"],
            }
            answered = "masked" in ((saved["protocol"] or {}).get("outbox") or {})
            if not answered and (request is not None or saved.get("site_dp") is not None):
                try:
                    extra = noised_input(saved, request, extra)
                except ValueError as exc:
                    self._refused.add((rid, phase))
                    log.error(
                        "round %d: refused the server's masked-input task (site-level DP): %s; "
                        "this site will count as dropped",
                        rid,
                        exc,
                    )
                    return
        try:
            # In the protocol this site is its round's pseudonym, as every other site is.
            me = info.get("protocol_id") or site
            state, message = site_step(saved["protocol"], task, site=me, **extra)
        except SecAggError as exc:  # the server asked for something an honest site refuses
            self._refused.add((rid, phase))
            log.error("round %d: refused the server's %s task: %s", rid, phase, exc.message)
            return
        self.store.save(rid, {**saved, "protocol": state})  # before posting: a restart resends it
        try:
            answer = self.client.post_json(
                f"/agent/rounds/{rid}/secure/{ENDPOINT[phase]}/", message
            )
        except ApiError as exc:
            self._refused.add((rid, phase))
            raise exc
        log.info("round %d: secure aggregation, %s step %s", rid, phase, answer.get("result"))

    def forget_finished(self, active: set[int]) -> None:
        """Delete the secrets of rounds whose protocol is over (or never included us)."""
        if self.store is None:
            return
        for rid in self.store.rounds():
            if rid in active:
                continue
            try:
                info = self.client.get_json(f"/agent/rounds/{rid}/secure/")
            except ApiError as exc:
                if exc.status != 404:
                    continue
                info = {"phase": "over"}
            if info["phase"] in OVER or info.get("status") == "dropped":
                self.store.forget(rid)
                log.info(
                    "round %d: secure aggregation %s; this site's round secrets deleted",
                    rid,
                    info["phase"],
                )
