"""The ASGI middleware alone, every setting from ``LB_*`` variables: the application a test
runs under a real server of its choice, from that server's own command line
(``uvicorn tests.support.middleware_app:app``, ``hypercorn ...``, ``granian ...``), as a
user runs it."""

from lbmiddleware.asgi import LoadBalancerMiddleware

app = LoadBalancerMiddleware(None)
