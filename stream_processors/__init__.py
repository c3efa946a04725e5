"""The consuming side: faust agents that move Kafka records into ClickHouse (``app``,
``runtime``, ``sinks``), the scorer they call (``scoring``) and the webhook dispatcher
(``webhooks``)."""
