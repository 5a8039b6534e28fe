"""Policy: the language (`language`: rules, thresholds, ignore list), conditions and their
compiler, the engine that turns events into alerts, the ignore list as kernel filters, learning
a policy from what a host does, and the alert stage the daemon runs (`alerting`)."""
