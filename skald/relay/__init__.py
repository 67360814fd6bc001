"""Stream relay channels (rendezvous, broadcast, request/responder), the legacy patchwork routes and the stream API."""
