"""The Kafka topics goalstream reads and writes; names are part of the public interface."""

CUSTOMERS = "goalstream.customers"
EVENTS = "goalstream.events"
PROPENSITY = "goalstream.propensity"
RECOMMENDATIONS = "goalstream.recommendations"
DEADLETTER = "goalstream.deadletter"

ALL = (CUSTOMERS, EVENTS, PROPENSITY, RECOMMENDATIONS, DEADLETTER)
# What the gateway writes (and the processors store): the topics a backlog is counted on.
INGEST = (EVENTS, CUSTOMERS, DEADLETTER)
