"""Policies for a fleet: the policy in force delivered by a TUF repository (The Update
Framework: signed, threshold-signed, expiring metadata; pinned root), verified, checked as
`check-policy` does, applied as a SIGHUP reload is, and kept for a restart without network.

`outcome` (values) and `updates` (the daemon's side) do not import python-tuf; `client`,
`fetcher`, `refusals` and `cache` do, and are imported only when `policy.tuf` is set.
"""
