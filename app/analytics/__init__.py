"""Figures over a tenant's messages (the dashboard's overview), kept as messages change."""
