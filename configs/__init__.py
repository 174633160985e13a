from .loader import add_config_args, load_config, parse_args, save_config, setup_config  # noqa: F401
from .defaults import get_cfg_defaults  # noqa: F401
