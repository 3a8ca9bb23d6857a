"""The in-process broker: for the default single-process run."""

from .base import Broker


class InProcessBroker(Broker):
    """Delivers at once to the subscribers registered in this process, for the rooms
    held here (valid for one worker process)."""

    def __init__(self, linger=5.0):
        super().__init__(linger)
        self._subscribers = []
        self._rooms = set()

    def start(self, on_event, on_resync):
        self._subscribers.append(on_event)
        on_resync()

    def publish(self, room, payload):
        if room in self._rooms:
            for on_event in list(self._subscribers):
                on_event(payload)

    def healthy(self):
        return True

    def stop(self):
        self._subscribers.clear()
        self._rooms.clear()
        self._drop_holds()

    def _subscribe(self, room):
        self._rooms.add(room)

    def _unsubscribe(self, room):
        self._rooms.discard(room)

    def _wait_subscribed(self, room, timeout):
        return True
