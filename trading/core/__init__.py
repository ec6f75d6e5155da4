"""The pure arbitrage core: no Django, Celery, Redis or ccxt. Time is always passed in.

Shared by the live listener, the trade worker, the paper gateway and the backtest.
"""
