"""May a failed attempt go to another backend? The proxy's retry question.

The rules: ``docs/contract.md``, "Retries". (The shared attempt loop in
:mod:`lbmiddleware.core.attempts` asks the same question of its retry rule; this
function stays for the callers that ask it directly.)
"""

from __future__ import annotations

__all__ = ["may_retry", "IDEMPOTENT_METHODS"]

# RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def may_retry(method: str, *, sent: bool, replayable: bool, responded: bool = False,
              retry_non_idempotent: bool = False) -> bool:
    """May a failed attempt be tried again on another backend?

    * ``responded``: a byte of the response reached the client: never.
    * not ``sent`` (a connect failure: the request never reached the backend): yes, for
      any method.
    * after sending: only an idempotent method (or any, with ``retry_non_idempotent``)
      whose body can be sent again (``replayable``).
    """
    if responded:
        return False
    if not sent:
        return True
    return replayable and (retry_non_idempotent or method.upper() in IDEMPOTENT_METHODS)
