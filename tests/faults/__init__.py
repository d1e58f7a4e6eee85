"""Fault tests: deliveries survive killed workers, a lost Redis, dropped PostgreSQL
connections and misbehaving providers; nothing is lost, and nothing is sent twice except
where a fault fell between a provider's acceptance and our write of it."""
