"""Scenarios: steps run against a running lab (checks, faults, waits), faults undone at the end.

table (the runner of every step kind), run (dispatch, results, undo), steps (checks),
waits (state-polling steps), faults (steps that break the lab), recorded (the lab's
journal-recorded daemons, as faults stop and start them), undo.
"""
