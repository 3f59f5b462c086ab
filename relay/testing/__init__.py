"""Test helpers that ship with relay: a real webhook receiver on loopback.

- :mod:`relay.testing.receiver`: :class:`~relay.testing.receiver.Receiver`, in-process and
  scriptable (relay's own tests, ``relay demo``, and an app's tests of its subscriptions);
- :mod:`relay.testing.receiver_process`: the same as a separate, cheap process (acceptance
  tests, the benchmark).

Importing this package imports neither (aiohttp stays out of ``import relay``).
"""
