"""A Redis that stops answering must not take a worker's database connections with it.

Page views read who is here from Redis (waiting up to its 1 s timeout); they used to do
so while holding a pooled database connection, so with a stalled Redis a few concurrent
views exhausted the pool and the rest failed with "every database connection is busy".
"""

import os
import signal
import time

import gevent
import requests


def test_page_views_with_a_stalled_redis_keep_the_database_pool_free(live, own_redis):
    """Guarantee row: Redis stalled (SIGSTOP), pool of one connection: concurrent room and
    home page views are all served, none waits on the pool."""
    server = live(REDIS_URL=own_redis.url, WEB_CONCURRENCY="1", DATABASE_POOL_SIZE="1",
                  DATABASE_WRITE_TIMEOUT="2")
    server.open_room("lobby")
    assert server.post_json("lobby", "a", "hello").status_code == 201
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        def view(path):
            started = time.monotonic()
            response = requests.get(server.url + path, timeout=30)
            return response.status_code, time.monotonic() - started

        views = [gevent.spawn(view, path) for path in ["/lobby/"] * 6 + ["/"] * 2]
        gevent.joinall(views, timeout=40)
        results = [greenlet.value for greenlet in views]
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert [status for status, _ in results] == [200] * len(results), results
    assert max(seconds for _, seconds in results) < 10, results  # Redis' timeout, not the pool's queue
    assert "every database connection of this worker is busy" not in server.log()
