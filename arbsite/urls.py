from django.contrib import admin
from django.urls import path

from trading import dashboard, views

urlpatterns = [
    # Before the admin's own URLs, which would otherwise claim the path; admin_view keeps it staff-only.
    path("admin/dashboard/", admin.site.admin_view(dashboard.view), name="dashboard"),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
]
