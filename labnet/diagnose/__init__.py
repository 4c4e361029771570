"""Diagnosis of a running lab: facts (what is observed), rules (what is wrong, and why),
report (`labnet doctor`'s output and verb), bundle (the per-node diagnostics file)."""
