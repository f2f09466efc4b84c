"""Start a Celery worker on the right queues.

    manage.py worker                 # server queue + every active hosted site's queue
    manage.py worker --site st-marys # only St Mary's work, next to its storage
    manage.py worker --server-only   # aggregation and sweeping only
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from clients.models import Site
from fedhealth.celery import app
from fedhealth.uploads import clean_staging


class Command(BaseCommand):
    help = "Run a Celery worker consuming the server queue and/or sites' queues."

    def add_arguments(self, parser):
        parser.add_argument("--site", action="append", default=[], help="consume only this site's queue (repeatable)")
        parser.add_argument("--server-only", action="store_true")
        parser.add_argument("--beat", action="store_true", help="also run the sweeper schedule (one per deployment)")
        parser.add_argument("--concurrency", type=int, default=1)
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--hostname", default=None)
        parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"],
                            help="prefork (default) enforces time limits; solo runs tasks in the main process")

    def handle(self, *args, site, server_only, beat, concurrency, loglevel, hostname, pool, **options):
        if site:
            found = {s.slug: s for s in Site.objects.filter(slug__in=site)}
            missing = sorted(set(site) - set(found))
            if missing:
                raise CommandError(f"no such site: {', '.join(missing)}")
            queues = [found[s].queue for s in site]
        elif server_only:
            queues = [settings.FEDHEALTH_SERVER_QUEUE]
        else:
            hosted = Site.objects.filter(mode=Site.Mode.HOSTED, is_active=True)
            queues = [settings.FEDHEALTH_SERVER_QUEUE, *(s.queue for s in hosted)]
        # Uploads a killed web process left half-read in the private staging folder.
        removed = clean_staging()
        if removed:
            self.stdout.write(f"removed {removed} stale staged upload(s)")
        self.stdout.write(f"consuming: {', '.join(queues)}")
        argv = ["worker", "-Q", ",".join(queues), f"--concurrency={concurrency}", f"--loglevel={loglevel}", f"--pool={pool}"]
        if beat:
            argv += ["-B", f"--schedule={settings.CELERY_BEAT_SCHEDULE_FILENAME}"]
        if hostname:
            argv += [f"--hostname={hostname}"]
        app.worker_main(argv)
