"""The kernel signals the daemon watches, one package per probe family (its event, the pure
decode of its kernel records, its exact totals and its monitor), plus what they share
(`monitor.Monitor`, `totals.KernelTotals`)."""
