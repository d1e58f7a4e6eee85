"""Tenant message templates: storage, versions and sandboxed rendering."""
