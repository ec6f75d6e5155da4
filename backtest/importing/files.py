"""Data files: opening plain or gzip CSV, telling quotes from candles, and the venue and symbol
that a file's name gives."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import TextIO

from backtest.importing.candles import CandleColumns
from backtest.importing.quote_files import QUOTE_COLUMNS

CANDLES, QUOTES = "candles", "quotes"
FORMATS = ("auto", QUOTES, CANDLES)
# Quote currencies that a pair's name may end with, longest first so that "btcusdt" is BTC/USDT.
QUOTE_CURRENCIES = ("USDT", "USDC", "BUSD", "DAI", "USD", "EUR", "GBP", "JPY", "BTC", "ETH")
_SEPARATED_PAIR = re.compile(r"^([a-z0-9]+)[-_/]([a-z0-9]+)$")


class UnreadableFile(ValueError):
    """A file that cannot be imported at all: no header, unknown columns, no venue or symbol."""


def open_text(path: Path) -> TextIO:
    """The file as text, decompressed when its name ends in .gz; newline handling left to csv."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def stem(path: Path) -> str:
    """The name without .csv / .csv.gz: "coinbase_btcusd.csv.gz" -> "coinbase_btcusd"."""
    name = path.name.lower()
    for suffix in (".gz", ".csv"):
        name = name.removesuffix(suffix)
    return name


def split_pair(pair: str) -> str | None:
    """A unified symbol from a pair's name: "btcusd" and "btc-usd" -> "BTC/USD"; None if unknown."""
    separated = _SEPARATED_PAIR.match(pair)
    if separated:
        return f"{separated[1].upper()}/{separated[2].upper()}"
    upper = pair.upper()
    quote = next((q for q in QUOTE_CURRENCIES if upper.endswith(q) and len(upper) > len(q)), None)
    return None if quote is None else f"{upper.removesuffix(quote)}/{quote}"


def infer_series(path: Path) -> tuple[str, str] | None:
    """(venue, symbol) from a name like "<venue>_<pair>.csv.gz", else None:
    coinbase_btcusd.csv.gz -> ("coinbase", "BTC/USD"), kraken_btc-usdt.csv -> ("kraken", "BTC/USDT")."""
    venue, sep, pair = stem(path).partition("_")
    symbol = split_pair(pair) if sep and venue else None
    return None if symbol is None else (venue, symbol)


def detect_format(header: list[str], wanted: str = "auto") -> str:
    """QUOTES or CANDLES for a file with this header; `wanted` other than "auto" must match it.

    Raises UnreadableFile when the header has neither layout's columns, or not the wanted one's.
    """
    found = [
        kind
        for kind, fits in (
            (QUOTES, set(QUOTE_COLUMNS).issubset(header)),
            (CANDLES, CandleColumns.from_header(header) is not None),
        )
        if fits
    ]
    if wanted != "auto":
        if wanted not in found:
            raise UnreadableFile(f"the header {header} lacks the columns of {wanted}")
        return wanted
    if not found:
        raise UnreadableFile(
            f"the header {header} is neither quotes ({', '.join(QUOTE_COLUMNS)}) nor candles "
            "(timestamp_utc, open, high, low, close)"
        )
    return found[0]
