"""A hosted worker notices a dataset file that disappeared or changed under it, even
with the parsed rows cached in memory, and fails the update with DATA_CHANGED."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage

from aggregation import services
from aggregation.models import ClientUpdate, Round
from aggregation.reasons import Reason
from aggregation.services import sitework
from clients import services as dataset_services

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_round(site_a, make_dataset, make_experiment):
    """Site A trained round 1 (its split is cached in this process); round 2 is open."""
    dataset = make_dataset(site_a, rows=200, seed=3)
    experiment = make_experiment([dataset], num_rounds=3, min_sites=1)
    services.start_experiment(experiment.pk)
    first = ClientUpdate.objects.get(round__experiment=experiment, round__number=1)
    assert services.train_hosted_update(first.pk) == "submitted"
    services.aggregate_round(first.round_id)
    assert any(key[0] == dataset.pk for key in sitework._splits)
    update = ClientUpdate.objects.get(round__experiment=experiment, round__number=2)
    return dataset, update


def path_of(dataset) -> Path:
    return Path(dataset.file.path)


def assert_failed_as_changed(dataset, update):
    assert services.train_hosted_update(update.pk) == "failed: site data"
    update.refresh_from_db()
    assert update.status == ClientUpdate.Status.FAILED
    assert update.error_code == Reason.DATA_CHANGED
    assert update.error == Reason.DATA_CHANGED.label
    assert dataset.file.name not in update.error and "/" not in update.error
    assert not any(key[0] == dataset.pk for key in sitework._splits)  # the cached rows are dropped


def test_a_removed_file_fails_the_update_with_data_changed(second_round):
    dataset, update = second_round

    path_of(dataset).unlink()

    assert_failed_as_changed(dataset, update)


def test_a_replaced_file_fails_the_update_with_data_changed(second_round):
    dataset, update = second_round
    path = path_of(dataset)
    text = path.read_text()
    # Same size, one value changed: only the checksum can tell.
    changed = text.replace("\n7", "\n8", 1)
    assert changed != text and len(changed) == len(text)

    path.write_text(changed)

    assert_failed_as_changed(dataset, update)


def test_an_unchanged_file_is_checked_with_one_stat_and_trains(second_round, monkeypatch):
    dataset, update = second_round
    reads = []
    real_open = FileSystemStorage.open

    def counting_open(self, name, mode="rb"):
        reads.append(name)
        return real_open(self, name, mode)

    monkeypatch.setattr(FileSystemStorage, "open", counting_open)

    assert services.train_hosted_update(update.pk) == "submitted"
    # Verified in round 1; same size and time, so not read (hashed) again.
    assert dataset.file.name not in reads and reads  # (the model and log were read)
    assert Round.objects.get(pk=update.round_id).updates.get(pk=update.pk).status == "received"


def test_verification_is_redone_when_the_file_is_touched(site_a, make_dataset):
    dataset = make_dataset(site_a, rows=60, seed=1)
    dataset_services.verify_dataset_file(dataset)
    path = path_of(dataset)

    path.write_bytes(path.read_bytes())  # rewritten, identical: new time, same checksum
    dataset_services.verify_dataset_file(dataset)
    path.write_bytes(path.read_bytes() + b"70,120,80,97,1\n")

    with pytest.raises(dataset_services.DatasetFileChanged) as caught:
        dataset_services.verify_dataset_file(dataset)
    assert str(path) not in str(caught.value)
