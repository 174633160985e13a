"""What every command-line entry point does around its `main`: user errors without a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from .distributed import cleanup
from .errors import ShipReIDError


def run_cli(main: Callable) -> None:
    """Run `main()`; a ShipReIDError prints its message and exits 2, a SIGTERM stop (TrainingInterrupted,
    recognised by name to keep utils free of processor imports) prints how to resume and exits 0."""
    try:
        main()
    except ShipReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001
        if type(err).__name__ != "TrainingInterrupted":
            raise
        print(err, file=sys.stderr)
    finally:
        cleanup()
