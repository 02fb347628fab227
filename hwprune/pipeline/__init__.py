"""The pipelines: compile (the stages in order, and the frontier of several budgets) and apply (a plan
re-applied and verified)."""
