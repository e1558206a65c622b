r"""The states of a model server and the moves between them (stdlib only).

One server per profile, supervisord style::

    STOPPED --start--> STARTING --answered a 1-token completion--> READY
       ^                 |   \                                    /   |
       |            stop |    +--- died / the model did not load -+    | stop, idle stop,
       |                 v                     |                       | eviction
       +----- gone --- STOPPING <--------------|-----------------------+
       |                                       v
       |               the profile restarts after a crash, and fewer than
       |               MAX_QUICK_FAILURES quick failures in a row?
       |                         yes /                    \ no
       |                            v                      v
       +------- dismiss ------- BACKOFF --no process-->  FAILED (= FATAL) --dismiss--> STOPPED
                                   |                       |
                                   +--due: start--+--------+--start
                                                  v
                                               STARTING

- STARTING: the process runs; READY is declared only once the model answered a real
  1-token completion (servers answer /health before the model is loaded).
- BACKOFF: the server failed and its profile asks for restarts: a start is due at
  `restart_at`. No process runs; the memory it needs stays reserved for it.
- FAILED (also spelled FATAL, supervisord's word): failed and nobody will retry; the
  reason and the log tail stay until someone starts or dismisses it. The stored value
  is "failed", as it always was.
- STOPPED -> READY / STARTING is adoption of a process an earlier dashboard run
  started; STOPPED -> FAILED is a start that never got a process (a busy port).
"""

from __future__ import annotations

import enum


class ServerState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"
    FATAL = "failed"  # an alias: supervisord's name for "gave up"

    @property
    def label(self) -> str:
        return "Restarting soon" if self is ServerState.BACKOFF else self.value.capitalize()


#: A process runs (or is being stopped).
ACTIVE_STATES = frozenset({ServerState.STARTING, ServerState.READY, ServerState.STOPPING})
#: The last run failed: the reason and the log tail are shown.
FAILED_STATES = frozenset({ServerState.BACKOFF, ServerState.FAILED})
#: A start now would be a new run (not a second one).
STARTABLE_STATES = frozenset({ServerState.STOPPED, *FAILED_STATES})
#: Holds (or will hold again) the memory of its model.
PLACED_STATES = frozenset({*ACTIVE_STATES, ServerState.BACKOFF})
#: Starting, stopping or waiting for a restart: the monitor samples faster meanwhile.
TRANSITIONAL_STATES = frozenset({ServerState.STARTING, ServerState.STOPPING,
                                 ServerState.BACKOFF})

ALLOWED: dict[ServerState, frozenset[ServerState]] = {
    ServerState.STOPPED: frozenset({ServerState.STARTING, ServerState.READY,
                                    ServerState.FAILED, ServerState.BACKOFF}),
    ServerState.STARTING: frozenset({ServerState.READY, ServerState.BACKOFF,
                                     ServerState.FAILED, ServerState.STOPPING}),
    ServerState.READY: frozenset({ServerState.STOPPING, ServerState.BACKOFF,
                                  ServerState.FAILED}),
    ServerState.STOPPING: frozenset({ServerState.STOPPED}),
    ServerState.BACKOFF: frozenset({ServerState.STARTING, ServerState.FAILED,
                                    ServerState.STOPPED}),
    ServerState.FAILED: frozenset({ServerState.STARTING, ServerState.STOPPED}),
}


def can_move(old: ServerState, new: ServerState) -> bool:
    """Is `old -> new` one of the moves in the diagram above?"""
    return new in ALLOWED[old]
