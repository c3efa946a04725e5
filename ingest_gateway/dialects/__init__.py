"""One module per vendor dialect, each implementing ``base.Dialect``."""

from .base import Dialect, Services
from .traitly import Traitly

DIALECTS: tuple[type[Dialect], ...] = (Traitly,)

__all__ = ["DIALECTS", "Dialect", "Services", "Traitly"]
