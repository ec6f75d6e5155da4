"""The one ledger: holds, executions with fees in the asset the venue charged, and an opportunity's
cash flow valued at a price."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import lot_amounts
from trading.core import ledger
from trading.core.ledger import Charge, Execution, Movement
from trading.core.types import Side

# 0.5 BTC bought at 30,000 on binance and sold at 30,100 on kraken, 0.1% fee each in USDT
BUY = Execution(
    "binance", "BTC/USDT", Side.BUY, Decimal("0.5"), Decimal(15000), (Charge("USDT", Decimal(15)),)
)
SELL = Execution(
    "kraken", "BTC/USDT", Side.SELL, Decimal("0.5"), Decimal(15050), (Charge("USDT", Decimal("15.05")),)
)


def test_a_buy_holds_its_amount_at_the_limit_with_the_fee_and_a_sale_its_base() -> None:
    assert ledger.hold_amount(Side.BUY, Decimal("0.5"), Decimal("60000"), Decimal("0.001")) == Decimal(
        "30030"
    )
    assert ledger.hold_amount(Side.SELL, Decimal("0.5"), Decimal("60000"), Decimal("0.001")) == Decimal("0.5")
    assert ledger.held_asset("BTC/USDT", Side.BUY) == "USDT"
    assert ledger.hold("a", "USDT", Decimal(5)) == Movement("a", "USDT", free=Decimal(-5), locked=Decimal(5))
    assert ledger.release("a", "USDT", Decimal(5)) == Movement(
        "a", "USDT", free=Decimal(5), locked=Decimal(-5)
    )


def test_a_fee_in_quote_comes_out_of_the_quote_received_or_paid() -> None:
    assert ledger.executed(BUY) == [
        Movement("binance", "BTC", free=Decimal("0.5")),
        Movement("binance", "USDT", free=Decimal(-15000)),
        Movement("binance", "USDT", free=Decimal(-15)),
    ]


def test_a_buy_charged_its_fee_in_base_holds_that_much_less_base() -> None:
    """Binance takes a buy's fee from the base it received: 0.5 bought, 0.4995 held."""
    buy = Execution(
        "binance", "BTC/USDT", Side.BUY, Decimal("0.5"), Decimal(30000), (Charge("BTC", Decimal("0.0005")),)
    )

    held = sum((m.free for m in ledger.executed(buy) if m.asset == "BTC"), Decimal(0))

    assert held == Decimal("0.4995")


def test_a_fee_in_a_third_asset_is_debited_from_that_asset() -> None:
    buy = Execution(
        "binance", "BTC/USDT", Side.BUY, Decimal("0.5"), Decimal(30000), (Charge("BNB", Decimal("0.04")),)
    )

    assert ledger.flows([buy]) == {"BTC": Decimal("0.5"), "USDT": Decimal(-30000), "BNB": Decimal("-0.04")}


def test_a_matched_trade_flows_only_quote_and_is_worth_its_quote() -> None:
    flows = ledger.flows([BUY, SELL])

    assert flows == {"BTC": Decimal(0), "USDT": Decimal("19.95")}
    assert ledger.value(flows, {"BTC": Decimal(30050)}, "USDT") == ledger.Valuation(Decimal("19.95"))


def test_a_one_sided_fill_is_worth_what_it_holds_at_the_price() -> None:
    """Bought 0.5 at 30,000 with a 15 fee, nothing sold; at a mid of 29,990 it has lost 20."""
    valuation = ledger.value(ledger.flows([BUY]), {"BTC": Decimal(29990)}, "USDT")

    assert valuation == ledger.Valuation(Decimal(-20))


def test_an_asset_without_a_price_is_named_not_counted_as_zero() -> None:
    buy = Execution(
        "binance", "BTC/USDT", Side.BUY, Decimal("0.5"), Decimal(30000), (Charge("BNB", Decimal("0.04")),)
    )
    sell = Execution("kraken", "BTC/USDT", Side.SELL, Decimal("0.5"), Decimal(30100))

    valuation = ledger.value(ledger.flows([buy, sell]), {"BTC": Decimal(30050)}, "USDT")

    assert valuation == ledger.Valuation(Decimal(100), ("BNB",))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), st.sampled_from(list(Side)), lot_amounts(), st.integers(1, 10**7)
        ),
        max_size=8,
    )
)
def test_the_flows_are_the_sum_of_every_balance_movement(drawn: list[tuple[str, Side, Decimal, int]]) -> None:
    executions = [
        Execution(venue, "BTC/USDT", side, amount, amount * price, (Charge("USDT", amount * price / 1000),))
        for venue, side, amount, price in drawn
    ]
    balances: dict[str, Decimal] = {}
    for execution in executions:
        for movement in ledger.executed(execution):
            balances[movement.asset] = balances.get(movement.asset, Decimal(0)) + movement.free

    flows = ledger.flows(executions)

    assert {asset: amount for asset, amount in flows.items() if amount} == {
        asset: amount for asset, amount in balances.items() if amount
    }
