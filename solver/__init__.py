from .optimizer import build_optimizer  # noqa: F401
from .scheduler import CosineWarmupScheduler, cosine_warmup_lr  # noqa: F401
