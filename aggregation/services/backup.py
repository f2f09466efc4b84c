"""Model backups: every version's weights plus what is needed to use them, verified.

A backup is a folder (or anything it is copied to) that stands alone: safetensors files,
and one manifest.json per experiment with each version's SHA-256, normaliser, schema,
model configuration and metrics, plus the experiment log. ``verify_backup`` re-hashes
every file against its manifest, so a backup can be checked before it is needed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedhealth.files import read_bytes

from ..models import Experiment
from . import artifacts

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BackupSummary:
    experiments: int
    versions: int
    bytes: int


def backup_models(out: Path, experiments: Iterable[Experiment]) -> BackupSummary:
    """Copy each experiment's versions to ``out/<experiment id>/`` with a manifest.

    Every file is checked against its recorded SHA-256 while it is copied: a corrupt
    version raises instead of being backed up as if it were good.
    """
    n_exp = n_versions = n_bytes = 0
    for experiment in experiments:
        folder = out / str(experiment.pk)
        folder.mkdir(parents=True, exist_ok=True)
        versions = []
        for v in experiment.versions.order_by("version"):
            data = read_bytes(v.weights_file)
            if hashlib.sha256(data).hexdigest() != v.sha256:
                raise ValueError(f"{experiment.name} v{v.version}: stored weights do not match their SHA-256")
            name = f"v{v.version}.safetensors"
            (folder / name).write_bytes(data)
            versions.append({
                "version": v.version, "file": name, "sha256": v.sha256, "round": v.round.number,
                "created_at": v.created_at.isoformat(), "normalizer": v.normalizer,
                "model_config": v.model_config, "schema": v.schema, "metrics": v.metrics,
            })
            n_versions += 1
            n_bytes += len(data)
        log = artifacts.read_log(experiment)
        (folder / "log.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in log))
        manifest = {
            "experiment": {"id": experiment.pk, "name": experiment.name, "status": experiment.status,
                           "config": experiment.federated_config().to_dict()},
            "versions": versions,
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        n_exp += 1
    return BackupSummary(n_exp, n_versions, n_bytes)


def verify_backup(root: Path) -> list[str]:
    """Problems found in a backup folder (empty when every file matches its manifest)."""
    problems: list[str] = []
    manifests = sorted(root.glob(f"*/{MANIFEST}"))
    if not manifests:
        return [f"no {MANIFEST} under {root}"]
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text())
        for v in manifest["versions"]:
            path = manifest_path.parent / v["file"]
            if not path.exists():
                problems.append(f"{path}: missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != v["sha256"]:
                problems.append(f"{path}: SHA-256 does not match the manifest")
    return problems
