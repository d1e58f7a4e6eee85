"""Recipients (a tenant's end users), categories, preferences and suppressions."""
