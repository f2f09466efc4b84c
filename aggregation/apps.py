from django.apps import AppConfig


class AggregationConfig(AppConfig):
    name = "aggregation"
    verbose_name = "Experiments and models"

    def ready(self) -> None:
        # Load the Celery app whenever Django starts, so tasks sent from web requests
        # and management commands use its configuration (cookiecutter-django does this
        # in the project package's __init__, which would drag Django into fedhealth.ml).
        from fedhealth.celery import app  # noqa: F401
