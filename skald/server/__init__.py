"""Running under hypercorn: the runner, graceful shutdown, connection limits, and everything that touches
hypercorn or h11 (the patches to its trio worker)."""
