"""What every command-line entry point shares: its --help description, and user errors without a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from .distributed import cleanup
from .errors import ShipReIDError


def describe(doc: str) -> str:
    """An entry point's --help description: the first paragraph of its module docstring on one line (its first
    line alone would cut a sentence that wraps onto the next). The paragraph ends at a blank or indented line."""
    lines = []
    for line in doc.strip().splitlines():
        if not line.strip() or line.startswith((" ", "\t")):
            break
        lines.append(line.strip())
    return " ".join(lines)


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
