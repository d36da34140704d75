"""The optimizer advisor (``optimlab advise``): the public import path of
:mod:`optimlab.lab.advice` (measured advice, no-compute rules with evidence, their text), which
lists the names (``__all__``).
"""

from .advice import *  # noqa: F403  (re-export: the names of optimlab.lab.advice)
from .advice import __all__  # noqa: F401
