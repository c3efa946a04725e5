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

from .commands import main, parser

__all__ = ["main", "parser"]
