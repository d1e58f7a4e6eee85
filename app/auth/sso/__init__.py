"""Single sign-on with a tenant's own OpenID Connect provider (authorization code + PKCE).

models.py: a tenant's provider (issuer, client, sealed secret) and the e-mail domains that
find it on the sign-in page; config.py: storing and reading them; oidc.py: the protocol
(discovery, the authorization request, the token exchange, the ID token's checks);
transport.py: every request to a provider, through the SSRF guard; signin.py: who a verified
ID token signs in, and where password sign-in must give way to SSO.
"""
