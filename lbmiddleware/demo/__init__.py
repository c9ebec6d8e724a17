"""``python -m lbmiddleware demo``: every policy against local backends with faults.

Its modules load on first use, so that ``python -m lbmiddleware.demo.backends`` (how the demo
starts each backend) runs that module once, not after this package had imported it already.
"""

from typing import TYPE_CHECKING

__all__ = ["main", "run_demo"]

if TYPE_CHECKING:
    from .runner import main, run_demo
else:
    def __getattr__(name: str) -> object:
        if name not in __all__:
            raise AttributeError(f"module 'lbmiddleware.demo' has no attribute {name!r}")
        from . import runner

        return getattr(runner, name)
