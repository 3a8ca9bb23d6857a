"""Rate limits, per connection and per client address (kept per worker process).

RATE_LIMIT ``N/S`` allows N messages in any S seconds on one socket; one client address
may send ten times that across all its sockets and form or API posts together (an HTTP
post has no connection of its own, so only the address limit applies to it).
ROOM_CREATE_LIMIT ``N/S`` allows one client address N new rooms in any S seconds.
"""

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class Throttle:
    def __init__(self, rate, address_factor, room_rate=None):
        self.enabled = rate.enabled
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.room_rate = room_rate if room_rate is not None and room_rate.enabled else None
        if self.room_rate:
            self._new_rooms = RateLimitItemPerSecond(room_rate.count, room_rate.seconds)
        if self.enabled:
            self._per_connection = RateLimitItemPerSecond(rate.count, rate.seconds)
            self._per_address = RateLimitItemPerSecond(rate.count * address_factor, rate.seconds)

    def allow(self, address, connection=None):
        """Count one message; False (and nothing counted) when a limit is reached."""
        if not self.enabled:
            return True
        if connection is not None and not self._limiter.test(self._per_connection, "conn", connection):
            return False
        if not self._limiter.hit(self._per_address, "addr", address):
            return False
        if connection is not None:
            self._limiter.hit(self._per_connection, "conn", connection)
        return True

    def allow_room(self, address):
        """Count one new room from ``address``; False (nothing counted) past ROOM_CREATE_LIMIT."""
        return self.room_rate is None or self._limiter.hit(self._new_rooms, "room", address)

    def forget(self, connection):
        """Drop a closed connection's window."""
        if self.enabled:
            self._limiter.clear(self._per_connection, "conn", connection)
