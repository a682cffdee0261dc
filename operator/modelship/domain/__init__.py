"""The operator's domain: pure functions from spec and observation to desired objects and status.

Nothing here talks to Kubernetes or imports kopf (import-linter contracts in pyproject.toml);
the state machines are driven tick by tick in unit tests.
"""
