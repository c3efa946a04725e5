"""The composition root: the ``goalstream`` command, and the only code that imports both
sides of the pipeline (``ingest_gateway`` and ``stream_processors``) and wires them into
processes.

- ``commands``: the argument parser, the settings and config built once, logging, and the
  one-shot commands (``sql``, ``train``, ``deadletter``, ``webhooks``);
- ``lifecycle``: the one open -> ready -> wait -> drain -> close routine every long-running
  command runs through, each stop bounded and cancellation-safe;
- ``stack``: ``goalstream up``, everything in one process tree;
- ``processes``: ``goalstream gateway``, ``worker``, ``dispatcher``, one part each;
- ``http``: the gateway's app on its HTTP and HTTPS sites;
- ``fronts`` and ``front``: ``goalstream up``'s HTTP front processes, the stack's side (bind,
  start, restart, drain, stop) and the front's own (the app on the inherited sockets);
- ``adapters``: the stream processors' scorer as the app's ports (``ingest_gateway.ports``);
- ``runfile``: how the one-shot commands find a running stack.
"""

import os
import sys

from .commands import main as _main
from .commands import parser


def main(argv: list[str] | None = None) -> int:
    """The ``goalstream`` entry point: ``commands.main`` with a closed pipe handled, so
    ``goalstream webhooks list | head`` ends quietly instead of with a BrokenPipeError."""
    try:
        rc = _main(argv)
        sys.stdout.flush()  # a pipe closed after the last print fails here, still caught
        return rc
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the interpreter's own
        # flush at exit does not raise again; 141 is what a shell reports for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


__all__ = ["main", "parser"]
