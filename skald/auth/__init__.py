"""Identity and access: tokens, scopes and the request guard, OIDC sign-in and web sessions, the admin API
and the audit of administrative actions."""
