"""What the tests run against, one job per module:

* ``servers``: :class:`BackendServer` (a loopback HTTP backend that echoes what reached it,
  with switchable failures), :class:`HandlerServer` (an http.server handler class served
  in a thread), :class:`RawServer` (the base of byte-exact backends),
  ``refused_url``, ``unaccepting_url``, ``read_request_head``.
* ``raw_backends``: :class:`RawBackend` (answers by request) and :class:`ScriptedBackend`
  (answers by connection), written byte by byte.
* ``asgi_client``: an ASGI application called in-process, as a server would.
* ``asgi_server``: an ASGI application under uvicorn in a thread (``ServerThread``).
* ``wsgi_client``: a WSGI application called in-process (``environ_for``, ``call``).
* ``wsgi_server``: a WSGI application under a threaded wsgiref server (``serve_wsgi``).
* ``http_client``: raw bytes to a port, one response read (``raw_request``).
* ``upstream_client``: the ASGI side's upstream pool driven directly (``fetch``).
* ``gateway``: ``python -m lbmiddleware serve`` as a subprocess (``GatewayProcess``).
* ``departures``: a backend's open connections seen from its side (``open_connections``,
  ``closed_by_the_client``) and a pool's unsubscribes recorded (``record_unsubscribes``).
* ``waiting``: ``wait_for`` (poll a condition) and ``LoopTicks`` (a loop was not blocked).
* ``health_backend``: :class:`HealthBackend` (a switchable ``/healthz``, every probe recorded).
* ``fleet_backend``: a backend in a process of its own that logs every request it handled
  and stops gracefully on SIGTERM (``BackendProcess``), for the rolling restarts.

The fixtures that make them (``backends``, ``raw_backend``, ``scripted``, ``certificate``)
are in tests/conftest.py; the proxy contract's drivers are in tests/contract/drivers.py.
"""
