"""Harnesses that run the real service, shared by the tests and the benchmarks (and usable by anyone embedding it):

- :mod:`~api.testing.live`: ``python -m api`` on a free loopback port, ready when ``/readyz`` says so;
- :mod:`~api.testing.stack`: several replicas behind the repository's nginx config, and the failure drill.

The service itself never imports this package (``make lint`` checks it).
"""
