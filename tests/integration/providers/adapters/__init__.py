"""Every provider adapter against its provider's protocol, faked only at the wire; one module
per adapter.

HTTP providers are faked with respx (the exact request each provider receives is asserted:
URL, auth, body, idempotency / correlation fields) or with a local HTTP server; SMTP runs
against a real aiosmtpd server; the webhook channel against a local receiver that verifies
signatures with the reference `standardwebhooks` package. Each row of the error tables in
PROVIDERS.md is a parametrized case.
"""
