"""API keys for the REST API; users, memberships and sign-in for the dashboard."""
