"""The tenants' web dashboard: server-rendered Jinja pages with HTMX."""

from admin_ui.app import Dashboard

__all__ = ["Dashboard"]
