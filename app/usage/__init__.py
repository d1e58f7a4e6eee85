"""Usage: messages counted per tenant, month and channel, and the plans' quotas on them."""
