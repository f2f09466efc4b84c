from django.apps import AppConfig


class AggregationConfig(AppConfig):
    name = "aggregation"
    verbose_name = "Experiments and models"

    def ready(self) -> None:
        # Load the Celery app whenever Django starts, so tasks sent from web requests
        # and management commands use its configuration (cookiecutter-django does this
        # in the project package's __init__, which would drag Django into fedhealth.ml).
        from fedhealth.celery import app

        from .heartbeat import install

        # Workers (`manage.py worker` or `celery -A fedhealth worker`) write a heartbeat
        # per queue while connected to the broker (see aggregation/heartbeat.py).
        install(app)
