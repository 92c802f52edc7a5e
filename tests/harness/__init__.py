"""Harnesses that run the real service, shared by the tests and the benchmarks:

- :mod:`~tests.harness.live`: ``python -m api`` on a free loopback port, ready when ``/readyz`` says so;
- :mod:`~tests.harness.stack`: several replicas behind the repository's nginx config, and the failure drill.

They live beside the tests, outside the ``api`` package, so that neither the wheel nor the image ships them; the
service never imports them (``make lint`` checks it).
"""
