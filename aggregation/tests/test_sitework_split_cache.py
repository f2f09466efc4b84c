"""An all-in-one worker serves every hosted site in turn: each site's parsed rows stay
cached between its rounds, however many sites there are (bounded by bytes, not by a
count of entries that a round's sites cycle through)."""

from __future__ import annotations

import pytest

from aggregation.services import sitework

pytestmark = pytest.mark.django_db


def test_twelve_sites_in_turn_each_parse_their_csv_once(make_site, make_dataset, make_experiment):
    # Prepare: more sites than the old 8-entry cache held
    sitework._splits.clear()
    datasets = [make_dataset(make_site(f"site-{i:02d}"), rows=60, seed=i) for i in range(12)]
    experiment = make_experiment(datasets)

    # Execute: two rounds' worth of tasks, the sites in the same order each time
    first = [sitework.site_split(experiment, ds.site) for ds in datasets]
    second = [sitework.site_split(experiment, ds.site) for ds in datasets]

    # Assert: the second round got the very objects the first parsed
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert len(sitework._splits) == 12


def test_the_cache_stays_within_its_byte_budget(make_site, make_dataset, make_experiment, monkeypatch):
    # Prepare: a budget that holds about two of these sites' splits
    sitework._splits.clear()
    datasets = [make_dataset(make_site(f"site-{i}"), rows=60, seed=i) for i in range(4)]
    experiment = make_experiment(datasets)
    one = sitework._split_bytes(sitework.site_split(experiment, datasets[0].site))
    monkeypatch.setattr(sitework, "_SPLIT_CACHE_BYTES", 2 * one + one // 2)

    # Execute
    for ds in datasets:
        sitework.site_split(experiment, ds.site)

    # Assert: the least recently used went first; the newest are kept
    assert sum(sitework._split_bytes(s) for s in sitework._splits.values()) <= sitework._SPLIT_CACHE_BYTES
    assert [key[0] for key in sitework._splits] == [datasets[2].pk, datasets[3].pk]
