"""Subgroups of the test cases for the fairness check: does balancing help one group and hurt another?

The attributes come from manifest columns where the data has them (ISIC 2017: ``sex`` and
``age_approximate``); ages are put in bands so each band holds enough melanomas for an AUC.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.data.manifest import Row

#: Upper bounds (exclusive) of the age bands; ISIC 2017's ages are rounded to 5 years.
AGE_BANDS = ((50, "<50"), (65, "50-64"), (200, ">=65"))


def age_band(value: str) -> str:
    try:
        age = float(value)
    except ValueError:
        return "unknown"
    return next(name for upper, name in AGE_BANDS if age < upper)


def case_groups(rows_by_number: dict[int, Row], test_rows: Sequence[int]) -> dict[str, list[str]]:
    """{attribute: value per test case} for the attributes the manifest holds (sex, age band)."""
    rows = [rows_by_number[n] for n in test_rows]
    groups: dict[str, list[str]] = {}
    if rows and all("sex" in r.fields for r in rows):
        groups["sex"] = [r.fields["sex"] or "unknown" for r in rows]
    if rows and all("age_approximate" in r.fields for r in rows):
        groups["age band"] = [age_band(r.fields["age_approximate"]) for r in rows]
    return groups
