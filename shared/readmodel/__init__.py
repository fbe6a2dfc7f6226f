"""The read model: every figure the `pulse` CLI and the dashboard show, read by the same functions.

    status.py       per job: schedule, next fire, last run, freshness, failures, queue;
                    24 h success rate and durations (the overview)
    runs.py         run listings with filters and keyset paging, one run
    deadletters.py  dead letters in the DLQ stream: list, one, replay, delete, purge
    schedules.py    schedules and their runtime overrides, upcoming and recent slots,
                    delayed one-off runs
    stats.py        market stats snapshots (latest and trend)
    alerts.py       alerts not delivered yet, per sink (the delivery consumers' backlog)
    why.py          what keeps a job from running now (blockers with what to do)
    timetext.py     durations and times as operators type them

Reads never write; the few writes here (schedule overrides, dead-letter replay and
removal) are the operator actions both front ends share. Run records are only ever
written through `shared.runtime` (`shared/runtime/_records.py`).
"""
