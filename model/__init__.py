from .build import BACKBONES, build_model, freeze_unreached  # noqa: F401
from .reid_model import ReIDModel  # noqa: F401
