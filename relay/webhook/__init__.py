"""What one webhook is: its body (mapping), signature, retry schedule, and the HTTP request.

Pure logic except :mod:`~relay.webhook.sender`, which makes the request through the
SSRF guard of :mod:`~relay.webhook.netpolicy`. The daemon's loops call these; nothing here
knows about claims, leases or the database.
"""
