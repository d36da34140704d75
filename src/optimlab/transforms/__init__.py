"""Update rules: small pure functions over lists of tensors, composed by :func:`optimlab.chain`.

See :mod:`optimlab.transforms.base` for the protocol. Every rule's docstring states its formula
and its source.
"""

from .adaptive import (
    ScaleByAdadelta,
    ScaleByAdagrad,
    ScaleByAdam,
    ScaleByAdamax,
    ScaleByNAdam,
    ScaleByRAdam,
    ScaleByRms,
    scale_by_adadelta,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
)
from .base import Bucket, Deferred, Transform, check_range
from .clipping import ClipByGlobalNorm, ClipByValue, clip_by_global_norm, clip_by_value
from .momentum import Trace, trace
from .regularization import AddWeights, L1Proximal, add_decayed_weights, add_l2, l1_proximal
from .scaling import (
    Scale,
    ScaleByInverseTimeDecay,
    ScaleByLearningRate,
    scale,
    scale_by_inverse_time_decay,
    scale_by_learning_rate,
)

__all__ = [
    "AddWeights",
    "Bucket",
    "ClipByGlobalNorm",
    "ClipByValue",
    "Deferred",
    "L1Proximal",
    "Scale",
    "ScaleByAdadelta",
    "ScaleByAdagrad",
    "ScaleByAdam",
    "ScaleByAdamax",
    "ScaleByInverseTimeDecay",
    "ScaleByLearningRate",
    "ScaleByNAdam",
    "ScaleByRAdam",
    "ScaleByRms",
    "Trace",
    "Transform",
    "add_decayed_weights",
    "add_l2",
    "check_range",
    "clip_by_global_norm",
    "clip_by_value",
    "l1_proximal",
    "scale",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_inverse_time_decay",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "trace",
]
