"""``relay api``: the JSON HTTP API for subscribers (operators' tools and tenants).

:func:`relay.api.app.create_app` builds the ASGI app; :func:`relay.api.server.main` runs it
under uvicorn with its settings (:mod:`relay.api.config`). Operations are those of
:mod:`relay.admin`, scoped by the API key's tenant.
"""
