"""Evaluation of policies and populations: `policy_eval` (one policy's mean true reward),
`population` (N seeded policies per method), `stats` (the paper's Tables 1–4: F-test, Welch's
t-test, empirical risk), `plots` (histograms like Figs. 5–6). Import the submodules directly;
this package imports nothing heavy on its own."""
