"""The ground floor: plain values every layer shares (events, alerts, names, label caps).

Nothing here does I/O or imports another package of ours.
"""
