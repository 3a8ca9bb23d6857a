"""REDIS_URL to a client: a single Redis or a cluster node, told apart by the server itself,
and a Redis that is down at start-up is asked again later instead of stopping anything."""

import time

import pytest
import redis

from webapp.redisconn import RedisConnector

from .support import RedisServer, free_port


def test_a_single_redis_gets_a_plain_client(redis_server):
    connector = RedisConnector(redis_server.url)
    assert isinstance(connector.client(), redis.Redis)
    assert connector.cluster is False
    assert connector.client().ping()


def test_any_cluster_node_gets_a_cluster_client(redis_cluster):
    for node in redis_cluster.nodes[:2]:
        connector = RedisConnector(redis_cluster.url_of(node))
        client = connector.client()
        assert isinstance(client, redis.RedisCluster) and connector.cluster is True
        for n in range(10):  # keys in every slot range: MOVED is followed, never an error
            client.set(f"redisconn-test-{n}", n)
            assert client.get(f"redisconn-test-{n}") == str(n).encode()


def test_a_redis_down_at_start_up_is_asked_again_later(tmp_path):
    port = free_port()
    connector = RedisConnector(f"redis://127.0.0.1:{port}/0", retry_every=0.2)
    with pytest.raises(redis.ConnectionError):
        connector.client()
    with pytest.raises(redis.ConnectionError):
        connector.client()  # within retry_every: refused at once, without a connect
    server = RedisServer(tmp_path)
    server.port = port
    server.start()
    try:
        time.sleep(0.25)
        assert connector.client().ping() and connector.cluster is False
    finally:
        server.kill()
