from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """Liveness and database check for load balancers and docker-compose."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure means "unhealthy", whatever the driver
        return JsonResponse({"status": "error", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "ok"})
