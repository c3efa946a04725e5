"""goalstream's shared contracts: what crosses a process boundary.

Everything that two services must agree on lives here and nowhere else: the Avro
schemas and their codec (``codec``), the canonical records and their partition key
(``model``), the Kafka topic names (``topics``), the ClickHouse DDL and the client that
applies it (``warehouse``), the config file's model (``config``) and the typed settings
of each service (``settings``). The gateway and the stream processors import from here,
never from each other; only the composition root, ``ingest_gateway.cli``, imports both,
to wire them into processes (``tests/unit/test_layout.py`` checks it). This package
imports neither.
"""
