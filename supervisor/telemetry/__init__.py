"""Opt-in error telemetry to Sentry (the seed's flow 14): off unless a DSN is given."""
