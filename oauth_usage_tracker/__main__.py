"""`python -m oauth_usage_tracker`: the same as the `oauth-usage-tracker` script."""
from __future__ import annotations

import gc


def main() -> None:
    """The script, with the cyclic collector off while the script's own modules are imported:
    their classes, functions and tables live until the process exits, so the collections their
    allocation triggers (about twenty) find no garbage, yet walk them. cli.run() keeps it off
    until the run's modules are imported, then freezes them and turns it back on. A run that
    returned ends the process without the interpreter's finalisation (cli.end_process): this is
    the script's own entry, never a library's caller."""
    gc.disable()
    from .cli import run
    run(end_at_once=True)


if __name__ == "__main__":  # pragma: no cover - process-exit shim
    main()
