"""thresh-opt: activation thresholds for LLMs on neuromorphic hardware."""

from thresh_opt.errors import ConfigError, UserError

__version__ = "0.1.0"

__all__ = ["ConfigError", "UserError", "__version__"]
