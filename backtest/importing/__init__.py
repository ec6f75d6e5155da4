"""Recorded data in: CSV exports of quotes and one-minute OHLCV candles into the quote table
(`loader`), and OHLCV downloads through ccxt into files the loader reads (`history`).

The parsing, the candle-to-quote model and the bad-row checks are plain functions (`rows`,
`files`, `candles`, `quote_files`) that a test can call without a database.
"""
