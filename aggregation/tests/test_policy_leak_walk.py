"""The leak walk: every API endpoint, every web page, live.json and every export, asked
by each of site A's personas (a member, a site admin, its agent token) and by the
coordinator. Nothing of sites B and C (name, slug, status, reason, note, figure) may
reach site A; the coordinator sees their reasons and figures, and no agent's note.

The URLs come from the URL resolver, so a new endpoint is walked without a change
here; one whose ids this file cannot fill makes the test fail until it says which.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.utils import timezone

from aggregation.models import ClientUpdate
from aggregation.reasons import Reason
from aggregation.reasons import text as reason_text
from aggregation.services.site_comparison import record_site_comparison
from clients.models import ApiToken, Invitation, Membership

from . import policy_world
from .policy_world import (
    COMPARE,
    GLOBAL,
    LEGACY_ERROR,
    LOCAL,
    NAMES,
    NOTES,
    OUTLIER_DETAIL,
    OWN_LEGACY_ERROR,
    VOLATILE,
    build_world,
    compare_figures,
    evaluate,
    time_passes,
)

pytest_plugins = ["clients.tests.api_fixtures"]
pytestmark = pytest.mark.django_db
a_personas = policy_world.a_personas  # a fixture

SLUGS = ["ashgrove", "brackenridge", "culverton"]
ROUNDS = [
    {"ashgrove": "accepted", "brackenridge": "accepted", "culverton": "accepted"},
    {"ashgrove": "note", "brackenridge": "rejected", "culverton": "accepted"},
    {"ashgrove": "accepted", "brackenridge": "note", "culverton": "failed:data_changed"},
    {"ashgrove": "legacy", "brackenridge": "legacy", "culverton": "accepted"},
]
# Web URLs a persona must not POST to during the walk: they would end the session, the
# agent persona's token, or a persona's membership (clients/tests/test_site_people.py
# checks that another site's token or member is a 404 there).
NO_POST = {"logout", "site_token_revoke", "member_remove"}


@pytest.fixture
def trio(make_site, make_dataset, remote_dataset, make_experiment, a_personas):
    trio = build_world(
        make_site, make_dataset, remote_dataset, make_experiment, slugs=SLUGS, rounds=ROUNDS
    )
    v1, v2, v3, _ = trio.versions
    for version, slugs in ((v1, SLUGS), (v2, SLUGS), (v3, SLUGS[:2])):
        for slug in slugs:
            evaluate(version, slug, trio.sites)
    # v3's evaluation deadline passed with two reports: final, but two sites are too few.
    time_passes(v3, 2 * 24 * 3600)
    # Every site's alone / global / personalised figures, through the one door.
    for slug in SLUGS:
        record_site_comparison(
            trio.experiment.participants.get(site__slug=slug), compare_figures(slug),
            source=trio.sites[slug].mode,
        )
    trio.running = _running(trio, make_experiment)
    a_personas(trio)
    return trio


def _running(trio, make_experiment):
    """A running experiment whose open round has waited an hour for every site, with no
    worker heartbeat: the pages' "no worker" notices must not name other sites to A."""
    from aggregation.models import Experiment, Round

    experiment = make_experiment(list(trio.datasets.values()), name="Policy live", num_rounds=2)
    Experiment.objects.filter(pk=experiment.pk).update(
        status=Experiment.Status.RUNNING,
        normalizer=trio.experiment.normalizer,
        initial_weights=trio.experiment.initial_weights,
        initial_sha256=trio.experiment.initial_sha256,
    )
    round_ = Round.objects.create(
        experiment=experiment, number=1, deadline=timezone.now() + timedelta(hours=1)
    )
    for site in trio.sites.values():
        update = ClientUpdate.objects.create(round=round_, site=site)
        ClientUpdate.objects.filter(pk=update.pk).update(
            created_at=timezone.now() - timedelta(hours=1)
        )
    return experiment


def url_patterns(
    patterns=None, prefix: str = "", namespace: str = "", groups: frozenset = frozenset()
):
    """(route, name, keyword arguments) of every URL pattern, depth first."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        here = groups | frozenset(p.pattern.regex.groupindex)
        if isinstance(p, URLResolver):
            ns = ":".join(x for x in (namespace, p.namespace) if x)
            yield from url_patterns(p.url_patterns, prefix + str(p.pattern), ns, here)
        elif isinstance(p, URLPattern):
            name = ":".join(x for x in (namespace, p.name) if x) if p.name else None
            yield prefix + str(p.pattern), name, sorted(here)


def ids_for(trio) -> dict[str, list[int]]:
    """URL name prefix -> the ids that fill its <pk>: every object of the kind, whoever owns it."""
    experiments = [trio.experiment.pk, trio.draft.pk, trio.running.pk]
    rounds = [r.pk for r in trio.rounds] + list(trio.running.rounds.values_list("pk", flat=True))
    versions = [v.pk for v in trio.versions]
    datasets = [d.pk for d in trio.datasets.values()]
    return {
        # API (router basenames)
        "agent-dataset-": datasets,
        "agent-round-": rounds,
        "agent-model-": versions,
        "agent-experiment-": experiments,  # an agent's comparison report, by experiment id
        "site-": [s.pk for s in trio.sites.values()],
        "dataset-": datasets,
        "experiment-": experiments,
        "round-": rounds,
        "update-": list(ClientUpdate.objects.values_list("pk", flat=True)),
        "modelversion-": versions,
        "invitation-": experiments,  # a site's invitations, by experiment id
        # pages
        "experiment_": experiments,
        "model_list": experiments,
        "consent_": experiments,
        "model_download": versions,
        "model_card": versions,
        "dataset_": datasets,
        "site_detail": [s.pk for s in trio.sites.values()],
        "site_invite_admin": [s.pk for s in trio.sites.values()],
        "member_": list(Membership.objects.values_list("pk", flat=True)),
        "invitation_": list(Invitation.objects.values_list("pk", flat=True)),
        "site_token_": list(ApiToken.objects.values_list("pk", flat=True)),
    }


def walk_urls(trio) -> tuple[list[str], list[str]]:
    """Every API URL and every page URL, with each id of the kinds they take."""
    ids = ids_for(trio)
    api, web = ["/api/v1/no-such-endpoint/"], []
    for route, name, kwargs in url_patterns():
        if name is None or name.startswith("admin:"):
            continue  # the admin needs staff, which no site persona is (checked below)
        values = {k: ["json"] for k in kwargs if k == "format"}
        if "key" in kwargs:  # an invitation link: its holder sees whose it is, so only a dud
            values["key"] = ["no-such-invitation"]
        if "pk" in kwargs:
            prefix = max((p for p in ids if name.startswith(p)), key=len, default=None)
            assert prefix is not None, (
                f"URL {name} ({route}) takes an id: say in ids_for() which objects fill it"
            )
            values["pk"] = ids[prefix]
        unknown = set(kwargs) - set(values)
        assert not unknown, (
            f"URL {name} ({route}) takes {unknown}: say in walk_urls() how to fill them"
        )
        combos = [{}]
        for key, options in values.items():
            combos = [c | {key: v} for c in combos for v in options]
        for combo in combos:
            url = reverse(name, kwargs=combo)
            (api if url.startswith("/api/") else web).append(url)
    web += [
        f"{reverse('model_list', args=[trio.experiment.pk])}?version={v.version}"
        for v in trio.versions
    ]
    web += [f"{reverse('predict')}?version={v.pk}" for v in trio.versions]
    return sorted(set(api)), sorted(set(web))


def body(response) -> str:
    if getattr(response, "streaming", False):
        data = b"".join(response.streaming_content)
        response.close()
        return data.decode(errors="replace")
    return response.content.decode(errors="replace")


def fetch(client, method: str, url: str) -> tuple[int, str]:
    cache.clear()  # throttle counters: the walk sends far more than a minute's worth
    response = client.get(url) if method == "GET" else client.post(url, {})
    assert response.status_code != 429, url
    assert response.status_code < 500, f"{method} {url}: {response.status_code}"
    return response.status_code, VOLATILE.sub(r"\1…", body(response))


# Database ids are not figures: on PostgreSQL the sequences run on across tests, so an
# object's own id (a JSON "id", a reference such as "dataset": 283 to A's own dataset, or a
# /datasets/283/ path) can equal another site's row count.
REFERENCES = r"id|pk|\w+_id|dataset|experiment|round|model|model_version|version"
IDS = re.compile(rf'"(?:{REFERENCES})":\s*\d+|/\d+/|[?&]\w+=\d+')


def found(secret: str, text: str) -> bool:
    # A number must stand alone: "283" inside a token or a longer figure is no leak.
    if re.fullmatch(r"[\d.]+", secret):
        text = IDS.sub("", text)
        return re.search(rf"(?<![\w.]){re.escape(secret)}(?![\w])", text) is not None
    return secret.lower() in text.lower()


def foreign_sites(value, own: str) -> list:
    """Values of "site" keys naming anyone but ``own``, anywhere in a JSON document."""
    if isinstance(value, dict):
        out = [v for k, v in value.items() if k == "site" and v != own]
        return out + [x for v in value.values() for x in foreign_sites(v, own)]
    if isinstance(value, list):
        return [x for v in value for x in foreign_sites(v, own)]
    return []


def forbidden_to_a(trio) -> list[str]:
    # A's own legacy failure text (no code) reads as an internal error, even to A.
    return [*trio.other_secrets(), OWN_LEGACY_ERROR, "secret-mount"]


def test_no_response_to_site_a_holds_anything_of_other_sites(trio):
    api, web = walk_urls(trio)
    forbidden = forbidden_to_a(trio)
    seen = {}
    for persona in ("member", "site_admin", "agent"):
        web_client, api_client = trio.personas[persona]
        requests = [(api_client, m, u) for u in api for m in ("GET", "POST")]
        if web_client is not None:
            requests += [
                (web_client, m, u)
                for u in web
                for m in ("GET", "POST")
                if not (m == "POST" and resolve(u.split("?")[0]).url_name in NO_POST)
            ]
        texts = []
        for client, method, url in requests:
            status, text = fetch(client, method, url)
            leaked = [s for s in forbidden if found(s, text)]
            assert not leaked, f"{persona}: {method} {url} ({status}) shows {leaked}"
            if text[:1] in "{[":
                try:
                    document = json.loads(text)
                except ValueError:
                    document = None
                assert not foreign_sites(document, "ashgrove"), (
                    f"{persona}: {method} {url} names other sites"
                )
            texts.append(text)
        seen[persona] = "\n".join(texts)

    # The walk reached what A may see: its own note, figures and the published mean.
    for persona in ("member", "site_admin", "agent"):
        assert NOTES["ashgrove"] in seen[persona], persona
        assert str(LOCAL["ashgrove"]["accuracy"]) in seen[persona], persona
    published = sum(GLOBAL[s]["accuracy"] for s in SLUGS) / 3
    assert (
        f"{published:.3f}" in seen["member"] and str(GLOBAL["ashgrove"]["auroc"]) in seen["member"]
    )
    assert reason_text(Reason.INTERNAL) in seen["member"]  # A's legacy failure, by its product text
    # A's own alone / global / personalised figures reached every persona (API and pages).
    for persona in ("member", "site_admin", "agent"):
        assert str(COMPARE["ashgrove"]["personalized"][1]) in seen[persona], persona
    assert f"{COMPARE['ashgrove']['alone'][0]:.3f}" in seen["member"]


def test_the_comparison_is_a_sites_own_row_and_the_coordinators_aggregate(trio):
    e = trio.experiment.pk
    own = trio.personas["agent"][1].get(f"/api/v1/experiments/{e}/").json()["comparison"]
    assert own["status"] == "done" and own["mode"] == "fedper"
    assert own["alone"]["balanced_accuracy"] == COMPARE["ashgrove"]["alone"][0]
    assert own["global_worse_than_alone"] is False and own["personalized_beats_alone"] is True
    coordinator = trio.personas["coordinator"][1].get(f"/api/v1/experiments/{e}/").json()["comparison"]
    assert coordinator["reported"] == 3 and coordinator["withheld"] is False
    assert coordinator["personalized_beats_alone"] == 2 and coordinator["personalized_compared"] == 3
    assert coordinator["global_worse_than_alone"] == 1  # Culverton's, but not which site
    mean = sum(COMPARE[s]["alone"][0] for s in SLUGS) / 3
    assert abs(coordinator["mean"]["alone"]["balanced_accuracy"] - mean) < 1e-9
    assert not foreign_sites(coordinator, "") and "culverton" not in json.dumps(coordinator)
    page = trio.personas["coordinator"][0].get(reverse("experiment_detail", args=[e])).content.decode()
    assert "worse than the site&#x27;s local-only model at 1 site" in page
    assert f"{mean:.3f}" in page and "Personalised beat alone at 2 of 3 sites" in page


def test_the_coordinator_sees_every_sites_reasons_and_figures_but_no_note(trio):
    api, web = walk_urls(trio)
    web_client, api_client = trio.personas["coordinator"]
    text = "\n".join(
        fetch(c, "GET", u)[1] for c, urls in ((api_client, api), (web_client, web)) for u in urls
    )

    for expected in (
        NAMES["brackenridge"],
        NAMES["culverton"],
        "brackenridge",
        OUTLIER_DETAIL,
        LEGACY_ERROR,
        OWN_LEGACY_ERROR,
        reason_text(Reason.DATA_CHANGED),
        str(LOCAL["brackenridge"]["accuracy"]),
        str(GLOBAL["culverton"]["auroc"]),
    ):
        assert found(expected, text), expected
    assert not [n for n in NOTES.values() if n in text]
    live = web_client.get(reverse("experiment_live", args=[trio.running.pk])).content.decode()
    assert (
        "No worker has taken" in live and NAMES["culverton"] in live
    )  # the notice the walk checks for A


def test_site_a_reads_its_own_reasons_and_note_by_code(trio):
    _, api_client = trio.personas["agent"]
    updates = api_client.get("/api/v1/updates/", {"experiment": trio.experiment.pk}).json()[
        "results"
    ]
    by_round = {u["round_number"]: u for u in updates}

    assert {u["site"] for u in updates} == {"ashgrove"}
    assert (
        by_round[2]["error_code"] == Reason.SITE_REPORTED
        and by_round[2]["site_note"] == NOTES["ashgrove"]
    )
    assert by_round[4]["error_code"] == Reason.INTERNAL and by_round[4]["error"] == reason_text(
        Reason.INTERNAL
    )
    round_2 = api_client.get(f"/api/v1/rounds/{trio.rounds[1].pk}/").json()["metrics"]
    assert round_2 == {"accepted": [], "rejected": [], "kept_previous_model": False}


def test_a_final_mean_of_two_sites_is_not_shown_to_a_site(trio):
    v3 = trio.versions[2]
    site = trio.personas["member"][1].get(f"/api/v1/models/{v3.pk}/").json()["metrics"]
    coordinator = trio.personas["coordinator"][1].get(f"/api/v1/models/{v3.pk}/").json()["metrics"]

    assert site == {"mean": {}, "sites_reported": 0, "final": False}
    assert (
        coordinator["final"] is True and coordinator["sites_reported"] == 2 and coordinator["mean"]
    )


def test_a_draft_shows_a_site_nothing_of_the_others(trio):
    _, api_client = trio.personas["member"]

    body = api_client.get(f"/api/v1/experiments/{trio.draft.pk}/").json()

    assert [{k: p[k] for k in ("site", "dataset", "consent")} for p in body["participants"]] == [
        {"site": "ashgrove", "dataset": trio.datasets["ashgrove"].pk, "consent": "accepted"}
    ]
    assert body["num_sites"] is None
    coordinator = (
        trio.personas["coordinator"][1].get(f"/api/v1/experiments/{trio.draft.pk}/").json()
    )
    assert {p["site"] for p in coordinator["participants"]} == set(SLUGS) and coordinator[
        "num_sites"
    ] == 3


def test_the_admin_is_closed_to_every_site_persona(trio):
    for persona in ("member", "site_admin"):
        response = trio.personas[persona][0].get(reverse("admin:index"))
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_walk_covers_every_endpoint_kind(trio):
    """A guard on the walk itself: it reaches the endpoints the issue names."""
    api, web = walk_urls(trio)
    e, r = trio.experiment.pk, trio.rounds[0].pk
    for url in (
        f"/api/v1/experiments/{e}/",
        f"/api/v1/experiments/{e}/metrics/",
        f"/api/v1/rounds/{r}/",
        f"/api/v1/agent/rounds/{r}/claim/",
        "/api/v1/agent/assignments/",
        "/api/v1/updates/",
    ):
        assert url in api, url
    for name in (
        "experiment_live",
        "experiment_export_json",
        "experiment_export_metrics",
        "experiment_export_log",
        "experiment_detail",
        "model_list",
    ):
        assert reverse(name, args=[e]) in web, name
    assert reverse("site_home") in web and reverse("predict") in web


def test_each_representation_has_exactly_the_documented_fields(trio):
    """The API serializers document what the policy returns (the OpenAPI schema is built
    from their fields): a field added to one and not the other fails here."""
    from aggregation.api import serializers as s

    _, api_client = trio.personas["member"]
    e, r, v = trio.experiment.pk, trio.rounds[0].pk, trio.versions[0].pk
    u = api_client.get("/api/v1/updates/").json()["results"][0]["id"]
    for serializer, url in (
        (s.ExperimentSerializer, f"/api/v1/experiments/{e}/"),
        (s.RoundSerializer, f"/api/v1/rounds/{r}/"),
        (s.UpdateSerializer, f"/api/v1/updates/{u}/"),
        (s.ModelVersionSerializer, f"/api/v1/models/{v}/"),
    ):
        for persona in ("member", "coordinator"):
            body = trio.personas[persona][1].get(url).json()
            assert set(body) == set(serializer().fields), (serializer.__name__, persona)
