from django.apps import AppConfig


class AggregationConfig(AppConfig):
    verbose_name = "Experiments and models"
    name = "aggregation"
