"""One module per vendor dialect, each implementing ``base.Dialect``.

The first is the fallback that renders errors for paths no dialect claims."""

from .base import Dialect, Services
from .customerio import CustomerIO
from .retainly import Retainly
from .segment import Segment
from .traitly import Traitly
from .triggerly import Triggerly

DIALECTS: tuple[type[Dialect], ...] = (Traitly, Triggerly, Retainly, CustomerIO, Segment)

__all__ = ["DIALECTS", "CustomerIO", "Dialect", "Retainly", "Segment", "Services", "Traitly", "Triggerly"]
