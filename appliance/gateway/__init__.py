"""The authenticating gateway: the only listener users reach.

A request flows ``app`` (routes, body limits, OpenAI-style errors) ->
``tokens`` (offline bearer validation against the realm's JWKS, through
``jwks``) -> ``ratelimit`` (token bucket per client) -> model authorisation
(the ``model`` field against the caller's roles, from ``config``) ->
``upstream`` (the model server on loopback, streaming preserved) -> ``audit``
(one hash-chained JSON line per call). ``__main__`` runs it under uvicorn with
TLS; ``certs`` makes a site certificate when the site provides none.

httpx and uvicorn load click and rich when imported, and the core must not:
both are imported inside functions only (tests/unit/test_core_imports.py).
"""
