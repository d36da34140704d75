"""optimlab: drop-in torch.optim optimizers built from composable update rules, and a lab.

Quick start::

    import optimlab as ol
    opt = ol.AdamW(model.parameters(), lr=1e-3)            # same arguments as torch.optim.AdamW
    opt = ol.chain(model.parameters(),                       # or compose your own
                   ol.transforms.clip_by_global_norm(1.0),
                   ol.transforms.scale_by_adam(b1=0.9, b2=0.999),
                   ol.transforms.add_decayed_weights(0.01),
                   lr=1e-3)
"""

from . import transforms
from .chain import NONFINITE_POLICIES, ChainOptimizer, NonFiniteGradientError, chain
from .optimizers import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop

__version__ = "0.1.0"

#: Named optimizers, by the lowercase names the lab and the CLI use.
OPTIMIZERS = {
    "sgd": SGD,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "nadam": NAdam,
    "radam": RAdam,
    "adadelta": Adadelta,
    "adamax": Adamax,
}

__all__ = [
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "ChainOptimizer",
    "NAdam",
    "NonFiniteGradientError",
    "RAdam",
    "RMSprop",
    "chain",
    "transforms",
]
