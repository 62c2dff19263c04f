"""What every control-plane Lambda shares: settings, adapter wiring, the error contract and caller checks."""
