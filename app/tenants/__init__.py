"""Tenants: the companies that use Herald."""
