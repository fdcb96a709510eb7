"""`python -m oauth_usage_tracker`: the same as the `oauth-usage-tracker` script."""

from .cli import run

if __name__ == "__main__":  # pragma: no cover - process-exit shim
    run()
