"""How a pipeline step shows itself: its name, then how long it took, or one line saying where it failed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from rich.console import Console

from hwprune.errors import HwpruneError, first_line
from hwprune.pipeline.memory import release

Step = Callable[[str], AbstractContextManager[None]]  # ``partial(step, console)``


@contextmanager
def step(console: Console, name: str, record: dict[str, float] | None = None) -> Iterator[None]:
    """Print a pipeline step and, when it succeeds, how long it took, added to ``record`` under the step's
    stage (its name up to any parenthesis: every search round adds to "search + prune"). An unexpected
    failure inside it becomes one line naming the step (exit 2; --debug shows the traceback), and the
    staging folder goes with it, so nothing that looks finished is left."""
    started = time.perf_counter()
    console.print(f"[bold]{name}[/bold] ...")
    try:
        yield
    except HwpruneError:
        raise
    except Exception as exc:  # a bug or an unforeseen model: say where, in one line
        raise HwpruneError(f"step '{name}' failed unexpectedly: {first_line(exc, 300)} "
                           "(rerun with --debug for the traceback)") from exc
    release()  # what the step freed goes back to the system, not into the next step's peak
    seconds = time.perf_counter() - started
    console.print(f"  done in {seconds:.1f} s")
    if record is not None:
        stage = name.split(" (")[0]
        record[stage] = record.get(stage, 0.0) + seconds
