"""The offline demo: simulated venues with paper balances, and the supervisor behind `make demo`."""
