"""How raypipe's HTML reports (evaluation and data) are rendered: value formatting and Jinja templates."""
from __future__ import annotations

import functools
import math
from typing import Any

import jinja2
from markupsafe import Markup


def fmt(v: Any) -> str:
    """A value as a report cell: missing or NaN as a dash, booleans as yes/no, floats to 4 digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@functools.cache
def templates(package: str) -> jinja2.Environment:
    """The templates of `package` (its folder) and the shared ones in raypipe/templates.

    Autoescaped, undefined names raise, and ``fmt`` is a filter; it leaves what a template
    macro rendered (``Markup``, already escaped) as it is and formats every other value.
    """
    loader = jinja2.ChoiceLoader([jinja2.PackageLoader(package, ""), jinja2.PackageLoader("raypipe", "templates")])
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = lambda v: v if isinstance(v, Markup) else fmt(v)
    return env
