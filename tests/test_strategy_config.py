"""A strategy config the strategy could not use is refused by the model's own validation, so every
place that saves one (the admin, a command, a promotion) can ask it. Real PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from tests.conftest import make_venue
from trading.models import StrategyConfig

pytestmark = pytest.mark.django_db


def config(**fields: Any) -> StrategyConfig:
    """An unsaved version the strategy could use, with `fields` changed."""
    values: dict[str, Any] = {
        "version": 1,
        "symbols": ["BTC/USDT"],
        "trade_size": Decimal("0.5"),
        "venue_limits": {"alpha": "5000"},
        **fields,
    }
    return StrategyConfig(**values)


def test_a_config_the_strategy_can_use_passes() -> None:
    make_venue("alpha")

    config().full_clean()


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("symbols", "BTC/USDT", 'A non-empty list of symbols, e.g. ["BTC/USDT"].'),
        ("symbols", ["BTCUSDT"], "'BTCUSDT' is not a symbol like BTC/USDT."),
        ("venue_limits", {"nowhere": "100"}, "Unknown venue(s): nowhere."),
        ("venue_limits", {"alpha": "-5"}, "The limit for alpha must be positive, got '-5'."),
        ("venue_limits", {"alpha": "lots"}, "The limit for alpha is not a number: 'lots'."),
        ("venue_limits", None, 'An object of venue name to notional, e.g. {"binance": "5000"}.'),
        ("trade_size", Decimal(0), "The trade size must be positive."),
    ],
)
def test_full_clean_refuses_a_config_the_strategy_could_not_use(field: str, value: Any, error: str) -> None:
    make_venue("alpha")

    with pytest.raises(ValidationError) as refused:
        config(**{field: value}).full_clean()

    assert refused.value.message_dict == {field: [error]}


def test_every_field_that_fails_is_named_and_an_excluded_one_is_not_checked() -> None:
    broken = config(symbols=["BTCUSDT"], trade_size=Decimal(0), venue_limits={"nowhere": "1"})

    with pytest.raises(ValidationError) as refused:
        broken.full_clean(exclude=["venue_limits"])

    assert sorted(refused.value.message_dict) == ["symbols", "trade_size"]
