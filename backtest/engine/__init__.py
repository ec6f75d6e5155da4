"""The backtest engine: recorded quotes replayed through the live strategy and fill model."""

from backtest.engine.arrays import QuoteArrays, from_quotes
from backtest.engine.replay import Replay, Result, SeenOpportunity, Setup, SimTrade

__all__ = ["QuoteArrays", "Replay", "Result", "SeenOpportunity", "Setup", "SimTrade", "from_quotes"]
