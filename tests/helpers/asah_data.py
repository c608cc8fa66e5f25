"""Reference data for the statistics tests: pROC's ``aSAH`` data set.

Turck et al. (2010) Intensive Care Med 36:107, as shipped with the R package pROC
(Robin et al. 2011, BMC Bioinformatics 12:77) and used in pROC's own test suite, whose
reference values the tests compare against. 113 patients; columns: outcome (P = Poor =
positive, G = Good), wfns (WFNS grade 1-5), s100b, ndka.
"""
from __future__ import annotations

import re

import numpy as np

ASAH = """
    G 1 0.13 3.01; G 1 0.14 8.54; G 1 0.1 8.09; G 1 0.04 10.42; P 3 0.13 17.4; P 2 0.1 12.75
    G 5 0.47 6.0; P 4 0.16 13.2; G 1 0.18 15.54; G 2 0.1 6.01; P 5 0.12 15.96; G 2 0.1 17.86
    P 5 0.44 5.18; P 5 0.71 8.9; G 1 0.04 13.41; G 2 0.08 20.75; P 5 0.49 11.6; G 2 0.04 16.11
    P 2 0.07 32.37; P 5 0.33 54.82; P 2 0.09 32.41; G 1 0.09 49.94; P 1 0.07 40.34; G 1 0.11 9.47
    G 1 0.07 6.29; G 2 0.17 12.53; G 1 0.07 6.54; G 2 0.11 6.3; G 1 0.13 80.3; G 1 0.19 12.8
    G 3 0.05 9.8; G 4 0.16 9.81; P 2 0.41 9.85; G 1 0.14 18.21; G 4 0.34 5.03; P 5 0.35 14.04
    P 4 0.48 21.93; G 1 0.09 8.02; P 4 0.96 7.42; P 2 0.25 8.38; G 5 0.5 6.59; G 5 0.46 9.63
    G 1 0.16 13.12; G 1 0.07 7.96; G 2 0.43 14.34; G 4 0.45 41.43; G 1 0.11 7.63; G 1 0.08 7.06
    G 2 0.09 12.59; P 5 0.86 13.56; P 5 0.52 3.87; G 2 0.08 9.44; G 1 0.06 7.66; G 2 0.13 12.98
    P 5 2.07 419.19; G 1 0.1 27.19; G 2 0.14 22.27; G 2 0.15 9.95; P 2 0.07 21.22; G 1 0.06 11.73
    P 5 0.77 10.4; G 1 0.05 58.83; G 1 0.09 6.39; P 2 0.3 11.09; P 5 0.03 12.22; P 2 0.09 13.67
    G 1 0.04 17.21; P 4 0.23 22.63; P 5 0.7 12.9; G 2 0.09 9.7; P 4 0.27 21.57; P 4 0.71 8.23
    P 1 0.08 72.57; P 4 0.26 15.54; G 1 0.08 10.51; G 2 0.16 10.6; G 1 0.09 14.57; P 4 0.13 5.19
    P 2 0.1 9.63; G 1 0.08 4.61; P 2 0.11 21.48; G 3 0.33 17.3; G 2 0.11 12.71; G 4 0.28 9.44
    G 2 0.07 11.07; G 1 0.1 19.46; G 4 0.32 10.83; P 5 0.22 5.37; G 1 0.07 11.97; G 1 0.05 7.75
    G 5 0.24 9.83; G 4 0.38 10.55; G 2 0.1 28.49; G 2 0.15 8.53; G 1 0.08 12.57; G 1 0.14 12.9
    G 1 0.1 46.83; G 3 0.07 11.68; G 1 0.04 12.67; G 2 0.19 9.01; P 5 0.56 9.57; P 2 0.14 34.06
    P 2 0.58 11.72; P 5 0.32 14.26; P 5 0.82 47.61; P 5 0.74 11.67; G 2 0.15 24.58; G 4 0.47 10.33
    G 4 0.17 13.87; P 5 0.44 15.89; G 1 0.15 22.43; G 1 0.5 6.79; G 1 0.48 13.45
"""
_ROWS = [r.split() for r in re.split(r"[;\n]", ASAH) if r.strip()]
Y = np.array([r[0] == "P" for r in _ROWS], dtype=int)
MARKERS = {name: np.array([float(r[k]) for r in _ROWS]) for k, name in ((1, "wfns"), (2, "s100b"), (3, "ndka"))}
assert len(_ROWS) == 113 and int(Y.sum()) == 41, "aSAH transcription: expected 113 patients, 41 Poor"
