"""Built-in tasks and the task registry. See :class:`Task` for the protocol.

Built-in task modules register themselves when imported here.
"""

from . import convex, functions2d, neural, presets, sequence
from .base import Batch, Task, TaskInfo
from .registry import TASKS, UnknownTaskError, make_task, register

__all__ = ["TASKS", "Batch", "Task", "TaskInfo", "UnknownTaskError", "convex", "functions2d",
           "make_task", "neural", "presets", "register", "sequence"]
