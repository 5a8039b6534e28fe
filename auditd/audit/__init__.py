"""The Linux audit netlink source: the protocol (`netlink`), the shared enable flag (`lease`),
the async reader (`source`), and records parsed into values (`records`, `assembler`)."""
