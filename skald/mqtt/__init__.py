"""MQTT 3.1.1 / 5.0 adapter over the durable pub/sub log (see docs/mqtt.md)."""
