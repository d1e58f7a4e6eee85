"""Rate limiting: token buckets in Redis, and the API's per-tenant intake limit."""

from app.ratelimit.buckets import (
    Bucket,
    Grant,
    TokenBuckets,
    api_bucket,
    api_key_bucket,
    inbox_bucket,
    provider_bucket,
    tenant_bucket,
)

__all__ = [
    "Bucket",
    "Grant",
    "TokenBuckets",
    "api_bucket",
    "api_key_bucket",
    "inbox_bucket",
    "provider_bucket",
    "tenant_bucket",
]
