"""The chat server's benchmark: an asyncio load generator of its own and a runner.

Run ``python -m bench.run --help`` (see bench/README.md).
"""
