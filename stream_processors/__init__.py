"""Stream processors: faust agents that move Kafka records into ClickHouse state."""
