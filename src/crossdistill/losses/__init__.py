"""Loss terms (registered by name) and the composer that sums them by config."""

import crossdistill.losses.attention  # noqa: F401  (registers at, nst)
import crossdistill.losses.c2kd  # noqa: F401  (registers feature_margin, shared_classifier)
import crossdistill.losses.crd  # noqa: F401  (registers crd)
import crossdistill.losses.dskd  # noqa: F401  (registers channel_independence, spatial_uniformity)
import crossdistill.losses.hint  # noqa: F401  (registers feature_hint)
import crossdistill.losses.logit  # noqa: F401  (registers dkd, dist)
import crossdistill.losses.rkd  # noqa: F401  (registers rkd_distance, rkd_angle)
import crossdistill.losses.similarity  # noqa: F401  (registers sp, pkt)
from crossdistill.losses import terms  # noqa: F401  (registers the standard terms)
from crossdistill.losses.base import (
    LOSS_TERMS,
    DataSizes,
    LossInputs,
    LossTerm,
    build_loss_term,
    register_loss,
)
from crossdistill.losses.composer import FEATURES_KEY, LossComposer, NonFiniteLossError

__all__ = [
    "FEATURES_KEY",
    "LOSS_TERMS",
    "DataSizes",
    "LossComposer",
    "LossInputs",
    "LossTerm",
    "NonFiniteLossError",
    "build_loss_term",
    "register_loss",
]
