"""Providers: tenants' provider accounts, and the adapters that speak each provider's protocol.

base.py (message in, result out), credentials.py (what each provider needs), service.py
(configs, routes, adapters), api.py (/v1/providers), adapters/ (one module per provider),
ssrf.py and standard_webhooks.py (outbound-URL guard and signing, shared with webhooks).
"""
