import json

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from aggregation import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished(make_site, make_dataset, make_experiment, drive):
    datasets = [make_dataset(make_site(f"b-{i}"), rows=200, seed=i) for i in range(2)]
    experiment = make_experiment(datasets, num_rounds=2)
    services.start_experiment(experiment.pk)
    return drive(experiment.pk)


def test_backup_copies_every_version_and_verifies(finished, tmp_path):
    call_command("backup_models", "--out", str(tmp_path / "bk"), verbosity=0)

    manifest = json.loads((tmp_path / "bk" / str(finished.pk) / "manifest.json").read_text())
    assert [v["version"] for v in manifest["versions"]] == [1, 2]
    assert manifest["versions"][0]["normalizer"]["mean"]
    assert (tmp_path / "bk" / str(finished.pk) / "log.jsonl").read_text().count("round_completed") == 2
    call_command("backup_models", "--verify", str(tmp_path / "bk"), verbosity=0)


def test_verify_detects_a_damaged_file(finished, tmp_path):
    call_command("backup_models", "--out", str(tmp_path / "bk"), verbosity=0)
    target = tmp_path / "bk" / str(finished.pk) / "v2.safetensors"
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")

    with pytest.raises(CommandError, match="v2.safetensors: SHA-256 does not match"):
        call_command("backup_models", "--verify", str(tmp_path / "bk"), verbosity=0)


def test_corrupt_stored_version_is_not_backed_up(finished, tmp_path):
    version = finished.versions.get(version=1)
    with default_storage.open(version.weights_file, "wb") as fh:
        fh.write(b"not the weights")

    with pytest.raises(CommandError, match="do not match their SHA-256"):
        call_command("backup_models", "--out", str(tmp_path / "bk"), verbosity=0)
