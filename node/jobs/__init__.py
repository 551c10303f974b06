"""Job execution: claiming with leases, analysis and building, recovery."""
