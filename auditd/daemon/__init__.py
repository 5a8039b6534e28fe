"""The daemon: wiring (which parts a command runs), the enrichment stage, the lifecycle (start,
serve, reload, stop in order) and systemd's notify protocol."""
