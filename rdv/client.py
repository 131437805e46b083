"""A Python client that makes the streaming system look like a call: send a request to
``raw`` and await its result on the return-address topic, correlated by request id, with
a timeout. Many requests can be in flight at once.

    with RendezvousClient() as client:
        result = client.call(entity_key="card-000001", numbers={"amount": 12.5}, timeout=2)
        print(result["model_id"], result["reason"], result["outputs"])
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from rdv.settings import Settings
from udfs.codec import DecodeError, codec_for, envelope


class ResultTimeout(TimeoutError):
    """No result for a request within the timeout (the request may still be answered)."""


class RendezvousClient:
    def __init__(
        self, *, raw_topic: str = "raw", return_address: str = "results",
        settings: Settings | None = None, component: str = "rdv-client",
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.raw_topic = raw_topic
        self.return_address = return_address
        self.component = component
        self._requests = codec_for("Request")
        self._results = codec_for("Result")
        self._pending: dict[str, Future[dict]] = {}
        self._received_at: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # librdkafka (confluent-kafka): a tenth of kafka-python's CPU per message, which
        # matters when the client shares two cores with the whole system
        bootstrap = self.settings.kafka_bootstrap
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": 1})
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"rdv-client-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 100,
        })
        meta = self._consumer.list_topics(return_address, timeout=10).topics.get(return_address)
        if meta is None or meta.error is not None or not meta.partitions:
            self._consumer.close()
            raise ValueError(f"return address topic {return_address!r} does not exist")
        tps = []
        for p in meta.partitions:  # start at the current end: no result sent later is missed
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(return_address, p), timeout=10)
            tps.append(TopicPartition(return_address, p, high))
        self._consumer.assign(tps)
        self._thread = threading.Thread(target=self._listen, name="rdv-results", daemon=True)
        self._thread.start()

    def __enter__(self) -> RendezvousClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._producer.flush(10)
        self._consumer.close()

    # ------------------------------------------------------------------ sending
    def request(
        self, *, entity_key: str, numbers: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None, refs: Mapping[str, str] | None = None,
        request_id: str | None = None, diagnostics: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> dict:
        """A Request record addressed to this client's return address."""
        rec = envelope(self.component, "0.1.0", tags=dict(tags or {}))
        rec.update(
            request_id=request_id or uuid.uuid4().hex, entity_key=entity_key,
            return_address=self.return_address,
            inputs={"numbers": dict(numbers or {}), "labels": dict(labels or {}),
                    "refs": dict(refs or {})},
            external_state=None, internal_state=None,
        )
        if diagnostics is not None:
            rec["diagnostics"] = {"trace": False, "log_level": None, "fallback_schedule": None,
                                  "faults": [], **diagnostics}
        return rec

    def send(self, request: dict) -> Future[dict]:
        """Send a Request record; the future completes with its Result record."""
        request["return_address"] = self.return_address
        fut: Future[dict] = Future()
        with self._lock:
            self._pending[request["request_id"]] = fut
        self._producer.produce(self.raw_topic, key=request["entity_key"].encode(),
                               value=self._requests.encode(request))
        self._producer.poll(0)
        return fut

    def flush(self) -> None:
        self._producer.flush(10)

    def call(self, *, timeout: float = 5.0, **fields: Any) -> dict:
        """Send one request and wait for its result (raises ResultTimeout)."""
        req = self.request(**fields)
        fut = self.send(req)
        self.flush()
        return self.wait(req["request_id"], fut, timeout)

    def wait(self, request_id: str, fut: Future[dict], timeout: float) -> dict:
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(request_id, None)
            raise ResultTimeout(f"no result for request {request_id} within {timeout} s") from None

    def received_at(self, request_id: str) -> int | None:
        """When (epoch ms) the result arrived at this client."""
        return self._received_at.get(request_id)

    # ------------------------------------------------------------------ receiving
    def _listen(self) -> None:
        while not self._stop.is_set():
            # block for the first message only, then take what is already there
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            batch = [first, *self._consumer.consume(num_messages=500, timeout=0)]
            now = time.time_ns() // 1_000_000
            for msg in batch:
                if msg.error() is not None:
                    continue
                res = self._results.decode(msg.value())
                if isinstance(res, DecodeError):
                    continue
                rid = res["request_id"]
                with self._lock:
                    fut = self._pending.pop(rid, None)
                if fut is not None:
                    self._received_at[rid] = now
                    fut.set_result(res)
