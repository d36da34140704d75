"""Built-in tasks and the task registry. See :class:`Task` for the protocol.

Built-in task modules register themselves when imported here.
"""

from . import cifar, convex, functions2d, neural, sequence, textfile
from .base import Batch, Task, TaskInfo
from .registry import TASKS, UnknownTaskError, check_task, make_task, register

__all__ = ["TASKS", "Batch", "Task", "TaskInfo", "UnknownTaskError", "check_task", "cifar",
           "convex", "functions2d", "make_task", "neural", "register", "sequence", "textfile"]
