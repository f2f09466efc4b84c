"""A worker's heartbeat per queue, written while it is connected to the broker.

A Celery *consumer* bootstep: Celery starts it once the worker has connected to the
broker and set up its task consumer, and stops it when the connection is lost (the
consumer restarts its steps on reconnection). So a worker cut off from the broker
stops beating even though its process is alive and its database reachable: exactly
the "invisible worker" the pages must report. It runs on the worker's own timer, not
as a task, so it needs no message from the broker to run.
"""

from __future__ import annotations

import logging

from celery import bootsteps
from django.conf import settings
from django.db import close_old_connections, connection

log = logging.getLogger(__name__)


class Heartbeat(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs) -> None:
        self.tref = None
        super().__init__(c, **kwargs)

    def start(self, c) -> None:
        queues = sorted(q.name for q in c.task_consumer.queues)
        hostname = c.hostname

        def beat() -> None:
            from .services.health import record_heartbeat

            # The worker's main thread keeps one database connection for days: drop it
            # if the database went away meanwhile, so the next beat reconnects.
            close_old_connections()
            try:
                record_heartbeat(queues, hostname)
            except Exception:  # a database outage must not stop the worker
                log.exception("heartbeat for %s not recorded", ", ".join(queues))
                connection.close()

        beat()
        self.tref = c.timer.call_repeatedly(settings.FEDHEALTH_HEARTBEAT_SECONDS, beat)

    def stop(self, c) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


def install(app) -> None:
    """Add the step to ``app``'s workers (idempotent)."""
    app.steps["consumer"].add(Heartbeat)
