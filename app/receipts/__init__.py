"""Receipts: whether a provider's delivery-receipt request is authentic, and what it reports.

events.py (the request in, the verdict and events out, and the bounds every scheme keeps),
then one module per scheme, each with a `receive_<scheme>(inbound, <secrets>, *, tolerance)`:
sendgrid.py (ECDSA), twilio.py (HMAC-SHA1 over URL and form), mailgun.py (HMAC-SHA256 in the
body), sns.py (Amazon SES through SNS: RSA under a fetched certificate), postmark.py (basic
auth), standard.py (Standard Webhooks, for tenants' own systems). Pure functions: no
database and no web framework here; the route stores what they return.
"""
