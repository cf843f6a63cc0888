"""Names the benchmark process and its simulator child agree on (kept free of heavy imports, so
the measured process does not load the simulator's web stack)."""

CLIENT_ID = "maildesk-bench-client"
CLIENT_SECRET = "maildesk-bench-secret"
EMAIL = "bench@example.com"
