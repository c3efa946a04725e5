"""Confluent wire format for the output topics, through a Confluent-compatible schema registry.

What flows through: the Avro bytes ``codec.encode`` made for ``goalstream.propensity`` and
``goalstream.recommendations``, framed as magic byte 0 + the 4-byte big-endian schema id +
the Avro binary, so Kafka Connect, ksqlDB or ClickHouse's ``AvroConfluent`` read them. The
goalstream headers stay on every message, and ``goalstream-wire: confluent`` says the value
is framed (an Avro record may itself start with a 0 byte: an empty first string).

The registry's REST API: ``POST /subjects/<topic>-value/versions`` (TopicNameStrategy) at
start, the ids cached for the process's life; ``GET /schemas/ids/<id>`` for a framed
message's writer schema, cached. Every call is bounded (``TIMEOUT_S``); a registry that is
down or refuses a schema as incompatible is a :class:`RegistryError` naming the subject.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any, Iterable, Mapping

import aiohttp
import fastavro

from . import codec, topics

WIRE_HEADER = "goalstream-wire"
CONFLUENT = b"confluent"
MAGIC = 0
TIMEOUT_S = 5.0
# The topics whose values are framed in Confluent mode: the scorer's outputs, read by
# downstream tools. Events and customers stay in the header form: the events sink hands
# their bytes to ClickHouse as they are, and the gateway's hot path is not made to wait on it.
FRAMED_TOPICS = {topics.PROPENSITY: "goalstream.GoalPropensityChange", topics.RECOMMENDATIONS: "goalstream.RecommendedNextActions"}
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """The schema registry is unreachable, or refused or does not know a schema."""


def subject(topic: str) -> str:
    return f"{topic}-value"  # TopicNameStrategy


def framed(value: bytes | None, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> bool:
    """Whether ``value`` is in the Confluent wire format: goalstream marks it in a header; a
    message from another producer (no goalstream headers) is taken as framed by its magic byte."""
    h = dict(headers) if not isinstance(headers, Mapping) else headers
    if h.get(WIRE_HEADER) == CONFLUENT:
        return True
    return codec.SCHEMA_HEADER not in h and bool(value) and len(value) >= 5 and value[0] == MAGIC


def frame(schema_id: int, payload: bytes) -> bytes:
    return struct.pack(">bI", MAGIC, schema_id) + payload


def unframe(value: bytes) -> tuple[int, bytes]:
    if len(value) < 5 or value[0] != MAGIC:
        raise codec.SchemaError("not in the Confluent wire format (magic byte 0 + 4-byte schema id)")
    return struct.unpack(">I", value[1:5])[0], value[5:]


class Registry:
    """A schema registry client: registers goalstream's schemas and reads writers' schemas by id."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None):
        self.url = url.rstrip("/")
        # Basic auth as a header (aiohttp's auth= is deprecated); the password never logged.
        self._auth = {"Authorization": "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()} if username else {}
        self._session: aiohttp.ClientSession | None = None
        self.ids: dict[str, int] = {}  # topic -> the id of the schema its values are written with
        self._by_id: dict[int, Any] = {}  # id -> parsed writer schema

    @classmethod
    def from_settings(cls, settings: Any) -> "Registry | None":
        if not getattr(settings, "schema_registry_url", None):
            return None
        pw = settings.schema_registry_password
        return cls(settings.schema_registry_url, settings.schema_registry_username, pw.get_secret_value() if pw else None)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), headers=self._auth)
        try:
            async with self._session.request(method, self.url + path, json=body, headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    try:
                        why = json.loads(text).get("message", text)
                    except ValueError:
                        why = text
                    raise RegistryError(f"schema registry {method} {path}: {resp.status} {why[:300]}")
                return json.loads(text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryError(f"schema registry at {self.url} did not answer {method} {path}: {exc!r}") from None

    async def start(self) -> None:
        """Register the output topics' schemas (idempotent in a registry: the same schema
        gets its existing id); a refusal (409: incompatible) stops the start, saying so."""
        for topic, name in FRAMED_TOPICS.items():
            schema = codec.LATEST[name]
            text = json.dumps(_raw(schema))
            answer = await self._call("POST", f"/subjects/{subject(topic)}/versions", {"schema": text})
            self.ids[topic] = int(answer["id"])
            self._by_id[self.ids[topic]] = schema.parsed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def frame_value(self, topic: str, value: bytes, headers: Iterable[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, bytes]]]:
        """(framed value, headers + the wire header) for a framed topic; as it was otherwise."""
        schema_id = self.ids.get(topic)
        if schema_id is None:
            return value, list(headers)
        return frame(schema_id, value), [*headers, (WIRE_HEADER, CONFLUENT)]

    async def writer_schema(self, schema_id: int) -> Any:
        if schema_id not in self._by_id:
            answer = await self._call("GET", f"/schemas/ids/{schema_id}")
            try:
                self._by_id[schema_id] = fastavro.parse_schema(json.loads(answer["schema"]))
            except Exception as exc:
                raise RegistryError(f"schema id {schema_id} from the registry does not parse: {exc}") from None
        return self._by_id[schema_id]


def _raw(schema: codec.Schema) -> Any:
    return json.loads((codec.AVRO_DIR / f"{schema.name}.v{schema.version}.avsc").read_text())


async def decode(value: bytes, headers: Mapping[str, bytes], registry: Registry | None) -> tuple[str, dict[str, Any]]:
    """A message of either form -> (schema name, record). Framed: with the registry, the
    writer's schema by its id; without one, the schema the goalstream headers name."""
    if not framed(value, headers):
        return codec.decode(value, list(headers.items()))
    schema_id, payload = unframe(value)
    if registry is not None:
        try:
            parsed = await registry.writer_schema(schema_id)
        except RegistryError as exc:
            raise codec.SchemaError(str(exc)) from None
        try:
            record = fastavro.schemaless_reader(io.BytesIO(payload), parsed, None)
        except Exception as exc:
            raise codec.SchemaError(f"cannot decode with registry schema {schema_id}: {exc}") from exc
        name = parsed.get("name", "") if isinstance(parsed, dict) else ""
        return codec.schema_of(list(headers.items())).name if codec.SCHEMA_HEADER in headers else name, record
    return codec.decode(payload, list(headers.items()))
