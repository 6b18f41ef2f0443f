"""How posttrain writes a p-value, the same in the CLI table, the sentence and the report.

A p-value printed with a fixed number of decimals reads `0.0000` when it is tiny, which looks like
"exactly zero" and hides how strong the evidence is. Small ones are written in scientific notation;
below `P_FLOOR` the numbers the tests give are no longer meaningful (approximations, float limits), so
they are written as a bound.
"""

from __future__ import annotations

import math

P_FLOOR = 1e-40


def fmt_p(p: float | None, *, missing: str = "—") -> str:
    """`0.4120`, `0.0049`, `3.2e-7`, `< 1e-40`; `missing` for no value."""
    if p is None or not isinstance(p, int | float) or math.isnan(p):
        return missing
    if p < P_FLOOR:
        return f"< {P_FLOOR:g}"
    if p < 0.001:
        return f"{p:.1e}".replace("e-0", "e-")
    return f"{p:.4f}"
