"""The HTTP face every capability shares: the app and its typed state, the request pipeline, the one
problem+json renderer, JSON bodies, parameters, SSE, the OpenAPI table, rate limits and the operator routes."""
