"""X/Y/Z grids: A1111's axes and value syntax, batched execution, cell cache, A1111-style grid images."""

from loracam.grid.api import AxisSpec, run_grid
from loracam.grid.plan import GridOptions, GridResult

__all__ = ["AxisSpec", "GridOptions", "GridResult", "run_grid"]
