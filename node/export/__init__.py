"""Export of built results to destinations: C-STORE SCU and STOW-RS, retries, dead letter."""
