"""Start-up wiring: the engine host, local mode, fleet mode and the heartbeat."""
