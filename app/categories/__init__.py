"""Categories of notifications, and what a critical one may do that others may not."""
