"""Framework-free ML core of tagloop (no Django imports anywhere under ml/)."""
