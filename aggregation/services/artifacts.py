"""Where an experiment's files live in storage, and how they are read back safely.

Every weights file is safetensors with its SHA-256 recorded in the database; a read
verifies the checksum, so a corrupt or swapped file is detected, never used.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction

from fedhealth.files import read_bytes, write_bytes
from fedhealth.ml.types import Weights
from fedhealth.ml.weights_io import sha256_hex, weights_from_bytes, weights_to_bytes

from ..models import ClientUpdate, Experiment, ModelVersion, Round


def save_weights(name: str, weights: Weights, metadata: dict[str, str] | None = None) -> str:
    """Write weights at ``name`` in storage; return their SHA-256."""
    data = weights_to_bytes(weights, metadata)
    write_bytes(name, data)
    return sha256_hex(data)


def load_weights(name: str, sha256: str) -> Weights:
    """Read weights from storage; raises ChecksumMismatch if the file changed."""
    return weights_from_bytes(read_bytes(name), expected_sha256=sha256)


def initial_name(experiment: Experiment) -> str:
    return f"{experiment.storage_prefix}/initial.safetensors"


def version_name(experiment: Experiment, version: int) -> str:
    return f"models/{experiment.pk}/v{version}.safetensors"


def update_name(update: ClientUpdate, sha256: str) -> str:
    # The checksum in the name makes a replayed upload land on the same file.
    return f"updates/{update.round.experiment_id}/r{update.round.number}/{update.site.slug}-{sha256[:16]}.safetensors"


def state_name(experiment: Experiment, round_number: int) -> str:
    # One file per round: a crash between writing it and committing the round leaves
    # the database pointing at the previous round's state, which a retry reuses.
    return f"{experiment.storage_prefix}/strategy_state_r{round_number}.safetensors"


def log_name(experiment: Experiment) -> str:
    return f"{experiment.storage_prefix}/log.jsonl"


def global_version_for(round_: Round) -> ModelVersion | None:
    """The version a round's sites start from: the latest before it (None: the
    experiment's initial weights)."""
    return (
        ModelVersion.objects.filter(experiment_id=round_.experiment_id, round__number__lt=round_.number)
        .order_by("-version")
        .first()
    )


def global_weights_for(round_: Round) -> tuple[Weights, int]:
    """The model a round's sites start from: the latest version before it, or the
    initial weights. Returns (weights, version number; 0 for the initial weights)."""
    return start_weights(round_.experiment, global_version_for(round_))


def start_weights(experiment: Experiment, previous: ModelVersion | None) -> tuple[Weights, int]:
    """``global_weights_for`` when the caller has looked the version up already."""
    if previous is None:
        return load_weights(experiment.initial_weights, experiment.initial_sha256), 0
    return load_weights(previous.weights_file, previous.sha256), previous.version


def write_log_event(experiment: Experiment, event: dict[str, Any]) -> None:
    """Record an event in the experiment's JSONL log, at most once per (event, round).

    Object stores have no append, so the log is rewritten whole; the experiment's row
    lock, taken here, serialises writers (aggregation and sites' evaluations can log
    at the same moment). Replacing a line with the same key keeps a retried step from
    logging twice.
    """
    name = log_name(experiment)
    key = (event.get("event"), event.get("round"))
    with transaction.atomic():
        Experiment.objects.select_for_update().filter(pk=experiment.pk).exists()
        try:
            lines = read_bytes(name).decode().splitlines()
        except FileNotFoundError:
            lines = []
        kept = []
        for line in lines:
            if line.strip():
                old = json.loads(line)
                if (old.get("event"), old.get("round")) != key:
                    kept.append(line)
        kept.append(json.dumps(event, sort_keys=True, default=str))
        write_bytes(name, ("\n".join(kept) + "\n").encode())


def read_log(experiment: Experiment) -> list[dict[str, Any]]:
    try:
        raw = read_bytes(log_name(experiment)).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


__all__ = [
    "global_version_for",
    "global_weights_for",
    "initial_name",
    "load_weights",
    "log_name",
    "read_log",
    "save_weights",
    "start_weights",
    "state_name",
    "update_name",
    "version_name",
    "write_log_event",
]
