"""HTTP plumbing shared by every capability (STYLE habit 11): nothing here knows a route."""
