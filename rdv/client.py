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

from kafka import KafkaConsumer, TopicPartition

from rdv.kafka_io import producer
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
        self._producer = producer(self.settings)
        self._consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
            # the broker answers a fetch as soon as one byte is there (long poll): a short
            # max wait would only add idle round trips
            fetch_min_bytes=1,
        )
        parts = self._consumer.partitions_for_topic(return_address)
        if not parts:
            self.close()
            raise ValueError(f"return address topic {return_address!r} does not exist")
        tps = [TopicPartition(return_address, p) for p in parts]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, so no result sent after this is missed
            self._consumer.position(tp)
        self._thread = threading.Thread(target=self._listen, name="rdv-results", daemon=True)
        self._thread.start()

    def __enter__(self) -> RendezvousClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()
        self._producer.close()

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
        self._producer.send(self.raw_topic, key=request["entity_key"].encode(),
                            value=self._requests.encode(request))
        return fut

    def flush(self) -> None:
        self._producer.flush()

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
            batch = self._consumer.poll(timeout_ms=50)
            now = time.time_ns() // 1_000_000
            for records in batch.values():
                for r in records:
                    res = self._results.decode(r.value)
                    if isinstance(res, DecodeError):
                        continue
                    rid = res["request_id"]
                    with self._lock:
                        fut = self._pending.pop(rid, None)
                    if fut is not None:
                        self._received_at[rid] = now
                        fut.set_result(res)
