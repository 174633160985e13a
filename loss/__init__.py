from .build import LossComposer, build_loss  # noqa: F401
from .terms import LOSS_TERMS  # noqa: F401
