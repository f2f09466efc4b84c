"""Shared pieces of the REST API (/api/v1/): authentication, errors, pagination,
throttling, query filters and OpenAPI helpers. Resources live in each app's ``api/``."""
