"""Benchmarks that print figures (`herald bench …`); not part of the test run."""
