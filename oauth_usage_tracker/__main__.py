"""`python -m oauth_usage_tracker`: the same as the `oauth-usage-tracker` script."""
import sys

from .cli import main

if __name__ == "__main__":  # pragma: no cover - process-exit shim
    sys.exit(main())
