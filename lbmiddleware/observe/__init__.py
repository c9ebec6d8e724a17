"""What an operator sees of a pool while it runs: the status page and its JSON (``status_app``,
``status_wsgi_app``, :func:`snapshot`), each pool's recent history (:func:`history_of`) and
the Prometheus metrics (``lbmiddleware.observe.metrics``, the ``metrics`` extra).

Read-only views: nothing here changes a pool. Standard library only, but for the metrics
module, which imports ``prometheus_client`` when it is used.
"""

from .app import StatusApp, StatusWSGIApp, status_app, status_wsgi_app
from .history import History, history_of
from .snapshot import SCHEMA, snapshot

__all__ = ["status_app", "status_wsgi_app", "StatusApp", "StatusWSGIApp", "snapshot",
           "SCHEMA", "History", "history_of"]
