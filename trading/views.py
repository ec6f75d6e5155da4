"""Operational endpoints: `/healthz` for load balancers and people, `/metrics` for Prometheus."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from trading.observability.health import health_report
from trading.observability.metrics import exposition


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 with the report when healthy, 503 with the same report otherwise."""
    healthy, report = health_report()
    return JsonResponse(report, status=200 if healthy else 503)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)
