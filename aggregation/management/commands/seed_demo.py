"""Seed a demo: a coordinator, three hosted sites with a user and sample data each, and a
draft experiment ready to start. Does nothing when sites already exist."""

import io

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from aggregation.services import consent
from aggregation.services.creation import create_experiment
from clients.models import Membership, Site
from clients.services import ingest_dataset
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.synthetic import generate_sites

DEMO_PASSWORD = "fedhealth-demo"
SITES = [("St Mary's Hospital", "st-marys"), ("Riverside Clinic", "riverside"), ("Northgate Medical Centre", "northgate")]


class Command(BaseCommand):
    help = "Create demo sites, users, data and an experiment if the database has no sites."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=1500)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, rows, seed, **options):
        if Site.objects.exists():
            self.stdout.write("sites exist already: demo not seeded")
            return
        User = get_user_model()
        frames = generate_sites(len(SITES), rows, seed=seed, non_iid=True)
        with transaction.atomic():
            coordinator = User.objects.create_user("coordinator", password=DEMO_PASSWORD, is_staff=True, is_superuser=True)
            Membership.objects.create(user=coordinator, role=Membership.Role.COORDINATOR)
            datasets, admins = [], {}
            for (name, slug), frame in zip(SITES, frames.values(), strict=True):
                site = Site.objects.create(name=name, slug=slug, contact_email=f"research@{slug}.example")
                user = User.objects.create_user(slug, password=DEMO_PASSWORD)
                Membership.objects.create(user=user, site=site, role=Membership.Role.SITE_ADMIN)
                admins[site.pk] = user
                result = ingest_dataset(site, io.BytesIO(frame.to_csv(index=False).encode()), name=f"{slug}-vitals.csv", user=user)
                datasets.append(result.dataset)
            # Through the creation service, as the form, the API and the admin do.
            experiment = create_experiment(
                created_by=coordinator, name="Demo: vitals classifier", datasets=datasets,
                schema=DEFAULT_SCHEMA.to_dict(), num_rounds=10, min_sites=2,
                description="Three sites with different populations train one classifier with FedAvg.",
            )
            # Each site's admin accepts the invitation with the dataset it uploaded (as on
            # the site's home page), so the demo is ready to start as the README says.
            for participant in experiment.participants.all():
                consent.accept(participant.pk, admins[participant.site_id], participant.dataset_id)
        self.stdout.write(self.style.SUCCESS("demo seeded"))
        self.stdout.write(f"  coordinator / {DEMO_PASSWORD}   (Django admin at /admin/)")
        for _, slug in SITES:
            self.stdout.write(f"  {slug} / {DEMO_PASSWORD}")
