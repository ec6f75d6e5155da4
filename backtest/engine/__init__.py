"""The backtest engine: recorded quotes replayed through the live strategy and fill model."""

from backtest.engine.arrays import QuoteArrays, from_quotes
from backtest.engine.records import Result, SeenOpportunity, SimTrade
from backtest.engine.replay import Replay, Setup

__all__ = ["QuoteArrays", "Replay", "Result", "SeenOpportunity", "Setup", "SimTrade", "from_quotes"]
