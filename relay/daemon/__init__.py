"""The daemon, ``relay run``: the loops that carry an outbox row to an acknowledged delivery.

Read in the order data flows:

- :mod:`~relay.daemon.listener`: LISTEN/NOTIFY wake-ups (with a slow poll as safety net);
- :mod:`~relay.daemon.dispatcher`: claims outbox rows and fans them out into deliveries;
- :mod:`~relay.daemon.deliverer`: claims due deliveries (retries, replays, lapsed leases);
- :mod:`~relay.daemon.slots` and :mod:`~relay.daemon.attempts`: request slots, prefetch, the
  HTTP attempt tasks (the request itself is :mod:`relay.webhook.sender`);
- :mod:`~relay.daemon.acker`: records outcomes in batches;
- :mod:`~relay.daemon.store`: the one database port all of the above call;
- :mod:`~relay.daemon.health` and :mod:`~relay.daemon.systemd`: probes, metrics, sd_notify;
- :mod:`~relay.daemon.service`: :class:`Relay`, which wires them and runs their lifecycle.

Importing this package imports none of them: admin commands stay free of aiohttp.
"""
