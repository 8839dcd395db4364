"""lorascope: train LoRA adapters across ranks and analyse the subspaces they learn."""

from lorascope.errors import LorascopeError

__version__ = "0.1.0"
__all__ = ["LorascopeError", "__version__"]
