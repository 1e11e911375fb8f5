"""The scheduler: inventory, policy, planning and dispatch of purge runs, and the CLI."""
