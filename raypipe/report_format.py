"""How numbers and values read in raypipe's HTML reports (evaluation and data)."""
from __future__ import annotations

import math
from typing import Any


def fmt(v: Any) -> str:
    """A value as a report cell: missing or NaN as a dash, booleans as yes/no, floats to 4 digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
