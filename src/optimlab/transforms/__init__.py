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
from .averaged_sgd import ScaleByAveragedSgd, scale_by_averaged_sgd
from .base import Bucket, Deferred, Transform, check_range
from .clipping import ClipByGlobalNorm, ClipByValue, clip_by_global_norm, clip_by_value
from .factored import ScaleByAdafactor, scale_by_adafactor
from .hypergradient import HypergradientProbe, HypergradientRate, ScaleByHypergradientRate
from .momentum import Trace, trace
from .orthogonal import (
    EmaTrace,
    Orthogonalize,
    ScaleByShape,
    ema_trace,
    orthogonalize,
    scale_by_shape,
)
from .prodigy import ProdigyProbe, ProdigyStep
from .regularization import AddWeights, L1Proximal, add_decayed_weights, add_l2, l1_proximal
from .scaling import (
    Scale,
    ScaleByInverseTimeDecay,
    ScaleByLearningRate,
    scale,
    scale_by_inverse_time_decay,
    scale_by_learning_rate,
)
from .schedule_free import ScaleBySecondMoment, ScheduleFreeAverage, ScheduleFreeInterpolate
from .sign import ScaleByLion, ScaleByRprop, scale_by_lion, scale_by_rprop

__all__ = [
    "AddWeights",
    "Bucket",
    "ClipByGlobalNorm",
    "ClipByValue",
    "Deferred",
    "EmaTrace",
    "HypergradientProbe",
    "HypergradientRate",
    "L1Proximal",
    "Orthogonalize",
    "ProdigyProbe",
    "ProdigyStep",
    "Scale",
    "ScaleByAdadelta",
    "ScaleByAdafactor",
    "ScaleByAdagrad",
    "ScaleByAdam",
    "ScaleByAdamax",
    "ScaleByAveragedSgd",
    "ScaleByHypergradientRate",
    "ScaleByInverseTimeDecay",
    "ScaleByLearningRate",
    "ScaleByLion",
    "ScaleByNAdam",
    "ScaleByRAdam",
    "ScaleByRms",
    "ScaleByRprop",
    "ScaleBySecondMoment",
    "ScaleByShape",
    "ScheduleFreeAverage",
    "ScheduleFreeInterpolate",
    "Trace",
    "Transform",
    "add_decayed_weights",
    "add_l2",
    "check_range",
    "clip_by_global_norm",
    "clip_by_value",
    "ema_trace",
    "l1_proximal",
    "orthogonalize",
    "scale",
    "scale_by_adadelta",
    "scale_by_adafactor",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_averaged_sgd",
    "scale_by_inverse_time_decay",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_shape",
    "trace",
]
