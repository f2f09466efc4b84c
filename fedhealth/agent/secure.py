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

from fedhealth.ml.secagg import SecAggError
from fedhealth.ml.secagg.sitestep import site_step
from fedhealth.ml.strategies.checks import update_problem
from fedhealth.ml.types import Update, Weights
from fedhealth.ml.weights_io import weights_from_bytes, weights_to_bytes

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
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a crash leaves the old file or the new one, never half

    def keep(self, round_id: int, weights: Weights, reference: Weights, num_samples: int) -> None:
        self._write(self._path(round_id, "update.safetensors"), weights_to_bytes(weights))
        self._write(self._path(round_id, "reference.safetensors"), weights_to_bytes(reference))
        self.save(round_id, {"num_samples": num_samples, "protocol": None})

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
    ) -> tuple[str, str] | None:
        """After training: check the update here, keep it, report the figures only (with
        ``spend``, the round's record-level DP spend from this agent's own accountant, as a
        plain round's upload carries it). Returns ``(code, note)`` to report as a failure."""
        if self.store is None:
            return (
                "site_reported",
                "secure aggregation needs the agent's state folder (--state-dir)",
            )
        problem = update_problem(Update(result.weights, result.num_samples, site), reference)
        if problem is not None:
            return ("site_reported", f"the trained update is not valid: {problem.reason}")
        self.store.keep(round_id, result.weights, reference, result.num_samples)
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
        extra: dict[str, Any] = {}
        if phase == "masked":
            extra = {
                "weights": self.store.weights(rid, "update"),
                "reference": self.store.weights(rid, "reference"),
                "num_samples": saved["num_samples"],
            }
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
