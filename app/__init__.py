"""Herald: a multi-tenant notification API."""
