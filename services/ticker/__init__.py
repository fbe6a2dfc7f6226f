"""The ticker service: turns schedules into job requests, exactly one per slot.

slots.py    what to do for one job now (pure: catch-up policies and recovery rules)
state.py    the `ticker` KV bucket, compare-and-set only
ledger.py   the slot ledger's writes (requested / missed entries), off the firing path
ticker.py   the loop: schedules (watched overrides), claims, publishes
metrics.py  tick lateness and slots fired
__main__.py wiring of the process
"""

from services.ticker.slots import SlotState, plan_slot
from services.ticker.ticker import Clock, Fired, SystemClock, Ticker, TickerTiming

__all__ = ["Clock", "Fired", "SlotState", "SystemClock", "Ticker", "TickerTiming", "plan_slot"]
