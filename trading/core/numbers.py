"""Writing a Decimal as text: the one formatter for amounts, prices and money that are shown to
people or sent to venues."""

from __future__ import annotations

from decimal import Decimal


def plain(
    value: Decimal | None,
    places: int | None = None,
    *,
    grouped: bool = False,
    signed: bool = False,
    trim: bool = True,
    missing: str = "-",
) -> str:
    """`value` in plain notation, never with an exponent; `missing` when it is None.

    Without `places` it is exact and without trailing zeros ("15050", "0.5"), to the context's
    precision (28 significant digits); `trim=False` keeps every digit it is held with ("1.50"),
    which is how a value is sent to a venue. With `places` it is rounded to that many decimals as
    the decimal context rounds. `grouped` puts commas between thousands and `signed` writes "+"
    before a value that is not negative: `plain(Decimal("1234.5"), 2, grouped=True, signed=True)`
    is "+1,234.50".
    """
    if value is None:
        return missing
    if places is None and trim:
        value = value.normalize()
    spec = f"{'+' if signed else ''}{',' if grouped else ''}{'' if places is None else f'.{places}'}f"
    return format(value, spec)
