"""Operations: Prometheus metrics, health endpoints and quota utilisation."""
