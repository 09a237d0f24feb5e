"""What happens in a running gateway, as a stream for ``tunvpn events`` (issue 20), like
strongSwan's ``swanctl --monitor`` or OpenVPN's management interface.

:class:`EventHub` is the sans-I/O core: the gateway :meth:`~EventHub.publish`-es one
:class:`Event` per thing that happens (a login, a refused login, an IPsec SA up or down, a
rekey, a reload, a logout); each subscriber (one ``tunvpn events`` connection on the control
socket) has a bounded queue of its own. Publishing never waits: a subscriber whose queue is
full (it stopped reading) is dropped, so a slow reader can never slow the gateway. The control
server (:class:`tunvpn.control.server.ControlServer`) drains the queues onto the sockets.

Only what an authenticated peer or the administrator caused is published: a phase 1 that fails
for an unauthenticated sender is counted in ``tunvpn status`` instead, so nobody outside can
flood the stream and have the subscribers dropped.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

QUEUE_SIZE = 1024
"""Events a subscriber may have waiting before it counts as stalled and is dropped."""
MAX_SUBSCRIBERS = 16
"""``tunvpn events`` connections at one time (more are refused)."""


class EventKind(enum.StrEnum):
    """The events of the stream (docs/service.md "Events" lists their fields)."""

    LOGIN = "login"
    """A client logged in (phase 1, XAUTH and extra protocols passed, Mode Config answered)."""
    LOGIN_FAILED = "login-failed"
    """A client that passed phase 1 was refused (XAUTH, a plugin, an extra protocol)."""
    LOGOUT = "logout"
    """A logged-in client's session ended (it left, was deleted, timed out)."""
    SA_UP = "sa-up"
    """An IPsec SA pair is up (``rekey``: it replaces one of the same policy)."""
    SA_DOWN = "sa-down"
    """An IPsec SA pair is gone."""
    REKEY = "rekey"
    """A client's ISAKMP SA was replaced by a new one (phase 1 rekey); the session goes on."""
    RELOAD = "reload"
    """The configuration was reloaded (``tunvpn reload`` or SIGHUP)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its kind, when (the gateway's wall clock, seconds) and its fields."""

    kind: EventKind
    time: float
    fields: dict[str, object] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        """The JSON object of the stream: ``{"event": kind, "time": t, **fields}``."""
        return {"event": self.kind.value, "time": round(self.time, 3), **self.fields}


class Subscriber:
    """One reader's queue; ``wake`` (set by the server) is called when an event is added or
    the subscriber is dropped."""

    def __init__(self, size: int) -> None:
        self.queue: deque[Event] = deque()
        self.size = size
        self.dropped = False
        self.wake: Callable[[], None] | None = None

    def take(self) -> list[Event]:
        """Every event waiting, oldest first."""
        out = list(self.queue)
        self.queue.clear()
        return out


class EventHub:
    """The gateway's events and their subscribers (module docstring).

    :param clock: the wall clock (``time.time``), read once per event.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        queue_size: int = QUEUE_SIZE,
        max_subscribers: int = MAX_SUBSCRIBERS,
    ) -> None:
        self.clock = clock
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.subscribers: list[Subscriber] = []
        self.listeners: list[Callable[[Event], None]] = []
        """Called with each event as it is published (the metrics' counters)."""
        self.published = 0
        self.dropped = 0
        """Subscribers dropped because they stopped reading."""

    def subscribe(self) -> Subscriber | None:
        """A new subscriber, or None when :attr:`max_subscribers` already listen."""
        if len(self.subscribers) >= self.max_subscribers:
            return None
        subscriber = Subscriber(self.queue_size)
        self.subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    def publish(self, kind: EventKind, **fields: object) -> Event:
        """Queue one event for every subscriber; one whose queue is full is dropped instead."""
        event = Event(kind, self.clock(), {k: v for k, v in fields.items() if v is not None})
        self.published += 1
        for listener in self.listeners:
            listener(event)
        for subscriber in list(self.subscribers):
            if len(subscriber.queue) >= subscriber.size:
                subscriber.dropped = True
                subscriber.queue.clear()
                self.subscribers.remove(subscriber)
                self.dropped += 1
            else:
                subscriber.queue.append(event)
            if subscriber.wake is not None:
                subscriber.wake()
        return event


__all__ = ["MAX_SUBSCRIBERS", "QUEUE_SIZE", "Event", "EventHub", "EventKind", "Subscriber"]
