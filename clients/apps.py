from django.apps import AppConfig


class ClientsConfig(AppConfig):
    verbose_name = "Sites and datasets"
    name = "clients"
