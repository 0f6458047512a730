"""HMDA (Boston mortgage denials) data in two layouts, generated with a fixed seed for tests and examples.

`prepared`: the layout of R's AER::HMDA (2,380 rows; `deny`, `afam` and the other indicators hold "no"/"yes",
`chist`/`mhist` are credit-history scores 1..6 / 1..4). `raw`: the survey's own coded columns the SDSC course
starts from (s7 action taken, 3 = denied; s13 applicant race, 3 = black, 4 = hispanic, 5 = white, 1/2 other
races the course's filter removes; s46 total obligations to income in percent; s45 housing expense to income,
s6 loan amount, s27a self-employed 1/0). The numbers are synthetic, drawn so that the course's models have
the familiar signs (denial rises with the payment ratio and for black/hispanic applicants).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PREPARED_ROWS = 2380
RAW_ROWS = 2925


def _yes_no(flags: np.ndarray) -> np.ndarray:
    return np.where(flags, "yes", "no")


def prepared(rows: int = PREPARED_ROWS, seed: int = 2380) -> pd.DataFrame:
    """A data set in AER::HMDA's layout (yes/no text indicators, numeric ratios and scores)."""
    rng = np.random.default_rng(seed)
    pirat = np.round(np.clip(rng.normal(0.331, 0.107, rows), 0.0, 3.0), 3)
    hirat = np.round(np.clip(pirat - rng.gamma(4.0, 0.02, rows), 0.0, None), 3)
    lvrat = np.round(np.clip(rng.normal(0.738, 0.178, rows), 0.02, 1.95), 4)
    chist = rng.choice(np.arange(1, 7), rows, p=[0.65, 0.2, 0.05, 0.03, 0.05, 0.02])
    mhist = rng.choice(np.arange(1, 5), rows, p=[0.3, 0.65, 0.03, 0.02])
    afam = rng.random(rows) < 0.142
    single = rng.random(rows) < 0.393
    hschool = rng.random(rows) < 0.984
    selfemp = rng.random(rows) < 0.116
    insurance = rng.random(rows) < 0.02
    condomin = rng.random(rows) < 0.288
    phist = rng.random(rows) < 0.074
    unemp = np.round(rng.choice([1.8, 2.0, 3.1, 3.2, 3.9, 4.3, 5.3, 10.6], rows), 1)
    eta = -4.1 + 5.4 * pirat + 0.9 * afam + 0.4 * (chist - 1) + 1.2 * phist + 4.0 * insurance + 0.5 * selfemp
    deny = rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))
    return pd.DataFrame(
        {
            "deny": _yes_no(deny),
            "pirat": pirat,
            "hirat": hirat,
            "lvrat": lvrat,
            "chist": chist,
            "mhist": mhist,
            "phist": _yes_no(phist),
            "unemp": unemp,
            "selfemp": _yes_no(selfemp),
            "insurance": _yes_no(insurance),
            "condomin": _yes_no(condomin),
            "afam": _yes_no(afam),
            "single": _yes_no(single),
            "hschool": _yes_no(hschool),
        }
    )


def raw(rows: int = RAW_ROWS, seed: int = 2925) -> pd.DataFrame:
    """A data set in the raw survey layout the course reads (coded integers, ratios in percent)."""
    rng = np.random.default_rng(seed)
    s13 = rng.choice([1, 2, 3, 4, 5], rows, p=[0.01, 0.03, 0.14, 0.04, 0.78])
    s46 = np.round(np.clip(rng.normal(33.1, 10.7, rows), 0.0, 300.0), 1)
    s45 = np.round(np.clip(s46 - rng.gamma(4.0, 2.0, rows), 0.0, None), 1)
    s6 = rng.integers(20, 980, rows)
    s27a = (rng.random(rows) < 0.116).astype(int)
    minority = np.isin(s13, [3, 4])
    eta = -4.0 + 0.055 * s46 + 1.1 * minority + 0.5 * s27a
    denied = rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))
    s7 = np.where(denied, 3, rng.choice([1, 2], rows, p=[0.9, 0.1]))
    return pd.DataFrame(
        {"s5": rng.choice([1, 2, 3], rows), "s6": s6, "s7": s7, "s13": s13, "s27a": s27a, "s45": s45, "s46": s46}
    )
