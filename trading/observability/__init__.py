"""Operations: structured logs with correlation ids and redaction, heartbeats, health and metrics."""
