"""A lab's lifecycle on the host: plan, build through a runtime, journal, tear down.

state (journal location, lock, lab lookup), processes (record, liveness, stop), lifecycle
(up, down, rollback), gc, status, pods, view (a running lab as checks see it), phases/ (the
ordered list `up` runs). Import the submodule you need; this package imports nothing.
"""
