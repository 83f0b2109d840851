"""Purchase-price check (business_rules.md section 5)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd


def cents(percent: np.ndarray) -> np.ndarray:
    """A price in percent rounded to 2 decimals the way a person rounds it:
    half up, on the decimal value shown (0.98755 x 100 -> 98.76), not on the
    binary float's noise."""
    return np.floor(np.round(percent * 100, 6) + 0.5)


def price_matches(lender_price: pd.Series, modeled_purchase_price: pd.Series) -> pd.Series:
    """The seller's Lender Price(%) must equal the modeled price to the cent."""
    lender = cents(lender_price.to_numpy(float))
    modeled = cents(modeled_purchase_price.to_numpy(float) * 100)
    return pd.Series(lender == modeled, index=lender_price.index)


def check_buy_loans(loans: pd.DataFrame) -> pd.Series:
    """True where a valid buy loan passes; invalid loans never pass."""
    return price_matches(loans["lender_price"], loans["modeled_purchase_price"]) & ~loans["invalid"]


def existing_mismatches(existing: pd.DataFrame, facility_period_start: dt.date) -> pd.DataFrame:
    """Assets bought in the current facility period whose price fails the same
    test. An asset without a modeled price was checked when it was bought."""
    in_period = existing["purchase_date"] > pd.Timestamp(facility_period_start)
    has_model = existing["modeled_purchase_price"].notna()
    fails = ~price_matches(existing["lender_price"], existing["modeled_purchase_price"])
    return existing[in_period & has_model & fails]
