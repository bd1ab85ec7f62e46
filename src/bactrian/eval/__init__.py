"""Evaluation, every model (the base and each adapter) side by side, per language.

`tasks/` holds every task, one file per family, in one registry: multiple choice scored by log-likelihood
(`scoring`) and generative tasks answered through the engine and scored per answer (`metrics`). `statistics`
gives each result its 95% interval; `report` writes results.json, the Markdown tables and the charts. `run` is
`bactrian eval`, `judge` is `bactrian eval judge` (pairwise judging, `pairwise`); `config` holds their options
and `lm_eval_tasks` writes lm-evaluation-harness task files on local data (parity tests, benchmarks)."""
