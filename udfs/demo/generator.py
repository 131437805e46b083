"""Reproducible synthetic card transactions with known fraud patterns.

Same seed, same data (apart from the envelope's message id and wall-clock timestamp, which
the transport owns): the transaction's own time travels in ``inputs.numbers.event_time_ms``
on a simulated clock, so velocities mean the same whether the data is replayed in a second
or streamed over a week.

Fraud patterns (the pattern name comes with each transaction from
:func:`transactions_with_patterns`):

- ``impossible_travel``: a card-present purchase at home, then minutes later a card-present
  purchase in a country thousands of km away (high ``card_velocity_kmh``);
- ``amount_spike``: an amount far above the customer's average, sometimes above the limit;
- ``night_risky``: gambling / crypto / digital goods, card not present, at night;
- ``small_burst``: card testing - a burst of tiny online payments within minutes;
- ``sanctioned_country``: an online payment to a merchant in a sanctioned country;
- ``account_takeover``: an online purchase that looks almost like the owner's (a little
  larger, a common category) - hard to catch, as in real life.

Legitimate traffic has look-alikes (real trips abroad, occasional big purchases, some
night-time gambling) so that no single feature separates the classes.

>>> reqs = list(transactions(3, seed=1))
>>> [r["entity_key"] for r, _ in reqs] == [r["entity_key"] for r, _ in transactions(3, seed=1)]
True
>>> round(haversine_km(0.0, 0.0, 0.0, 1.0), 1)
111.2
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from udfs.codec import envelope

Record = dict[str, Any]
T = TypeVar("T")

#: simulated clock start: 2024-01-01T00:00:00Z
START_MS = 1_704_067_200_000
CLIENT = "demo-client"
CLIENT_VERSION = "0.1.0"
RETURN_ADDRESS = "results"
PROFILE_SOURCE = "profiles"

#: one city per country: (lat, lon)
CITIES: dict[str, tuple[float, float]] = {
    "US": (40.71, -74.01), "CA": (43.65, -79.38), "MX": (19.43, -99.13), "BR": (-23.55, -46.63),
    "GB": (51.51, -0.13), "IE": (53.35, -6.26), "FR": (48.86, 2.35), "DE": (52.52, 13.40),
    "NL": (52.37, 4.90), "ES": (40.42, -3.70), "IT": (41.90, 12.50), "PL": (52.23, 21.01),
    "NG": (6.52, 3.38), "ZA": (-26.20, 28.05), "IN": (19.08, 72.88), "SG": (1.35, 103.82),
    "JP": (35.68, 139.69), "AU": (-33.87, 151.21), "RU": (55.76, 37.62), "CN": (31.23, 121.47),
    "KP": (39.04, 125.76), "IR": (35.69, 51.39), "SY": (33.51, 36.29), "CU": (23.11, -82.37),
}
HOME_COUNTRIES = {"US": 30, "GB": 12, "DE": 10, "FR": 9, "ES": 6, "IT": 6, "NL": 5, "CA": 6,
                  "BR": 5, "IN": 5, "JP": 3, "AU": 3}
SANCTIONED = ("KP", "IR", "SY", "CU")
TRAVEL_COUNTRIES = tuple(c for c in CITIES if c not in SANCTIONED)
RISKY_CATEGORIES = ("gambling", "crypto", "digital_goods")

#: merchant category -> (legit weight, probability card present, amount factor)
CATEGORIES: dict[str, tuple[float, float, float]] = {
    "grocery": (25, 0.95, 0.8), "restaurant": (17, 0.9, 0.7), "fuel": (11, 0.95, 0.9),
    "retail": (14, 0.75, 1.2), "pharmacy": (5, 0.9, 0.5), "entertainment": (4, 0.6, 0.9),
    "online_retail": (11, 0.0, 1.1), "travel": (4, 0.2, 3.0), "electronics": (4, 0.5, 2.5),
    "jewelry": (1, 0.7, 3.0), "gambling": (1.5, 0.1, 1.0), "crypto": (1, 0.0, 1.5),
    "digital_goods": (1.5, 0.0, 0.3),
}
SEGMENTS = {  # weight, average amount, credit limit, mean account age (days)
    "student": (15, 25.0, 1000.0, 400),
    "retail": (55, 55.0, 4000.0, 1500),
    "premium": (20, 140.0, 15000.0, 2500),
    "business": (10, 220.0, 25000.0, 2000),
}
PATTERNS = {  # weight, expected fraudulent transactions per episode
    "impossible_travel": (0.30, 1.0),
    "amount_spike": (0.30, 1.0),
    "night_risky": (0.25, 1.0),  # only at night, where it weighs NIGHT_RISKY_WEIGHT
    "small_burst": (0.10, 6.0),
    "sanctioned_country": (0.05, 1.0),
    "account_takeover": (0.15, 1.0),
}
#: fraudsters like the night: episodes are this much likelier then, and mostly night_risky
NIGHT_FRAUD_FACTOR = 10.0
NIGHT_RISKY_WEIGHT = 3.0
#: mean time between two transactions of one card (before the day/night rhythm)
MEAN_CARD_GAP_MS = 6 * 3_600_000
_NIGHT = range(0, 5)
_DIURNAL = [0.15, 0.1, 0.1, 0.1, 0.15, 0.3, 0.5, 0.8, 1, 1, 1, 1,
            1, 1, 1, 1, 1, 1, 1, 1, 0.9, 0.7, 0.5, 0.3]


# --------------------------------------------------------------------------- geometry


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (mean Earth radius 6371 km)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def velocity_kmh(previous: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Speed between two card-present points ``{lat, lon, event_time_ms}``.

    The time gap is floored at one second so two purchases at the same instant in different
    places give a huge, finite speed rather than a division by zero.

    >>> round(velocity_kmh({"lat": 0, "lon": 0, "event_time_ms": 0},
    ...                    {"lat": 0, "lon": 1, "event_time_ms": 3_600_000}), 1)
    111.2
    """
    km = haversine_km(previous["lat"], previous["lon"], current["lat"], current["lon"])
    hours = max(abs(current["event_time_ms"] - previous["event_time_ms"]), 1000.0) / 3_600_000
    return km / hours


# --------------------------------------------------------------------------- profiles


def _weighted(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class _Choice:
    """A weighted choice with its cumulative weights computed once (the hot path)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.names = list(weights)
        self.cum = list(itertools.accumulate(weights.values()))

    def __call__(self, rng: random.Random) -> str:
        return rng.choices(self.names, cum_weights=self.cum)[0]


_CATEGORY = _Choice({k: v[0] for k, v in CATEGORIES.items()})


def _card_id(i: int) -> str:
    return f"card-{i:06d}"


def profiles(n_cards: int, seed: int = 7) -> list[Record]:
    """Customer profiles, one per card; the value of the ``profiles`` topic keyed by card_id.

    Values are JSON-friendly scalars; ``updated_at`` (epoch ms) becomes ExternalState.as_of.
    """
    rng = random.Random(f"profiles-{seed}")
    out = []
    for i in range(n_cards):
        segment = _weighted(rng, {k: v[0] for k, v in SEGMENTS.items()})
        _, avg, limit, age = SEGMENTS[segment]
        country = _weighted(rng, HOME_COUNTRIES)
        lat, lon = CITIES[country]
        out.append({
            "card_id": _card_id(i),
            "user_id": f"user-{i:06d}",
            "home_country": country,
            "home_lat": round(lat + rng.gauss(0, 0.3), 4),
            "home_lon": round(lon + rng.gauss(0, 0.3), 4),
            "avg_amount": round(avg * rng.lognormvariate(0, 0.35), 2),
            "account_age_days": 1 + int(rng.expovariate(1 / age)),
            "credit_limit": round(limit * rng.uniform(0.6, 1.6), -2),
            "segment": segment,
            "updated_at": START_MS - rng.randrange(0, 30 * 86_400_000),
        })
    return out


# --------------------------------------------------------------------------- transactions


class _Card:
    __slots__ = ("p", "lat", "lon", "country", "trip_left", "busy_until")

    def __init__(self, p: Record) -> None:
        self.p = p
        self.lat, self.lon, self.country = p["home_lat"], p["home_lon"], p["home_country"]
        self.trip_left = 0
        self.busy_until = 0

    def go_home(self) -> None:
        self.lat, self.lon, self.country = self.p["home_lat"], self.p["home_lon"], self.p[
            "home_country"]
        self.trip_left = 0

    def local_hour(self, t_ms: int) -> int:
        return int(t_ms // 3_600_000 + round(self.p["home_lon"] / 15)) % 24


class _Sim:
    """The simulation: a global clock, one state per card, and a queue of scheduled frauds."""

    def __init__(self, seed: int, cards: list[Record], fraud_rate: float, start_ms: int,
                 id_prefix: str) -> None:
        if not cards:
            raise ValueError("transactions need at least one profile")
        if not 0 <= fraud_rate < 1:
            raise ValueError(f"fraud_rate {fraud_rate} must be in [0, 1)")
        self.rng = random.Random(f"transactions-{seed}")
        self.cards = [_Card(p) for p in cards]
        total = sum(w for w, _ in PATTERNS.values())
        per_episode = sum(w * k for w, k in PATTERNS.values()) / total
        self.p_episode = fraud_rate / per_episode
        self.t = start_ms
        self.gap_ms = MEAN_CARD_GAP_MS / len(self.cards)
        self.pending: list[tuple[int, int, int, str, str]] = []  # time, seq, card, pattern, kind
        self.seq = 0
        self.prefix = f"{id_prefix}-{seed}"

    def _schedule(self, t: int, card: int, pattern: str, kind: str) -> None:
        self.seq += 1
        heapq.heappush(self.pending, (t, self.seq, card, pattern, kind))

    def _next_natural(self) -> tuple[int, int]:
        rng = self.rng
        while True:
            self.t += max(1, int(rng.expovariate(1 / self.gap_ms)))
            c = rng.randrange(len(self.cards))
            if rng.random() < _DIURNAL[self.cards[c].local_hour(self.t)]:
                return self.t, c

    def events(self) -> Iterator[tuple[int, int, str | None, str]]:
        """(time, card index, fraud pattern or None, kind) in time order, forever."""
        while True:
            t, c = self._next_natural()
            while self.pending and self.pending[0][0] <= t:
                pt, _, pc, pattern, kind = heapq.heappop(self.pending)
                yield pt, pc, pattern, kind
            card = self.cards[c]
            night = card.local_hour(t) in _NIGHT
            p = self.p_episode * (NIGHT_FRAUD_FACTOR if night else 1.0)
            if t >= card.busy_until and self.rng.random() < p:
                yield from self._episode(t, c)
            else:
                yield t, c, None, "legit"

    def _episode(self, t: int, c: int) -> Iterator[tuple[int, int, str | None, str]]:
        rng, card = self.rng, self.cards[c]
        night = card.local_hour(t) in _NIGHT
        weights = {k: w for k, (w, _) in PATTERNS.items() if k != "night_risky"}
        if night:
            weights["night_risky"] = NIGHT_RISKY_WEIGHT
        pattern = _weighted(rng, weights)
        if pattern == "impossible_travel":
            card.go_home()
            later = t + rng.randint(5, 90) * 60_000
            card.busy_until = later + 1
            yield t, c, None, "home_card_present"
            self._schedule(later, c, pattern, "far_card_present")
        elif pattern == "small_burst":
            yield t, c, pattern, pattern
            at = t
            for _ in range(rng.randint(3, 7)):
                at += rng.randint(10, 90) * 1000
                self._schedule(at, c, pattern, pattern)
            card.busy_until = at + 1
        else:
            yield t, c, pattern, pattern

    def transaction(self, i: int, t: int, c: int, pattern: str | None, kind: str) -> Record:
        rng, card = self.rng, self.cards[c]
        p = card.p
        avg, limit = p["avg_amount"], p["credit_limit"]
        category, country, lat, lon = "grocery", card.country, card.lat, card.lon
        present = False
        if pattern is None:
            if kind == "home_card_present":
                category = rng.choice(("grocery", "restaurant", "fuel", "retail"))
                present = True
                country, lat, lon = p["home_country"], p["home_lat"], p["home_lon"]
            else:
                category, present, lat, lon, country = self._legit_place(card, t)
            factor = CATEGORIES[category][2]
            amount = avg * factor * rng.lognormvariate(0, 0.7)
            if rng.random() < 0.01:
                amount *= rng.uniform(3, 8)  # the occasional big legitimate purchase
            amount = min(max(amount, 1.0), 0.9 * limit)
        elif pattern == "impossible_travel":
            home = (p["home_lat"], p["home_lon"])
            far = [k for k in TRAVEL_COUNTRIES if haversine_km(*home, *CITIES[k]) > 2500]
            country = rng.choice(far)
            lat, lon = (v + rng.gauss(0, 0.1) for v in CITIES[country])
            category = rng.choice(("electronics", "jewelry", "retail"))
            present = True
            amount = avg * rng.uniform(1.5, 10)
        elif pattern == "amount_spike":
            category = rng.choice(("electronics", "jewelry", "travel"))
            present = rng.random() < 0.3
            country = p["home_country"]
            lat, lon = p["home_lat"], p["home_lon"]
            amount = avg * rng.uniform(6, 30)
            if rng.random() < 0.3:
                amount = max(amount, limit * rng.uniform(1.02, 1.5))
        elif pattern == "night_risky":
            category = rng.choice(RISKY_CATEGORIES)
            country = rng.choice(TRAVEL_COUNTRIES) if rng.random() < 0.5 else p["home_country"]
            amount = avg * rng.uniform(1.5, 6)
        elif pattern == "small_burst":
            category = "digital_goods"
            country = rng.choice(TRAVEL_COUNTRIES) if rng.random() < 0.5 else p["home_country"]
            amount = rng.uniform(0.5, 4.0)
        elif pattern == "sanctioned_country":
            category = rng.choice(("online_retail", "crypto", "travel"))
            country = rng.choice(SANCTIONED)
            amount = avg * rng.uniform(1, 5)
        elif pattern == "account_takeover":
            category = rng.choice(("online_retail", "electronics", "retail"))
            country = p["home_country"]
            amount = min(avg * rng.uniform(1.5, 4) * rng.lognormvariate(0, 0.4), 0.9 * limit)
        else:  # pragma: no cover - PATTERNS and this function change together
            raise AssertionError(pattern)
        return self._request(i, t, c, round(amount, 2), category, country, present, lat, lon)

    def _legit_place(self, card: _Card, t: int) -> tuple[str, bool, float, float, str]:
        rng, p = self.rng, card.p
        if card.trip_left > 0:
            card.trip_left -= 1
            if card.trip_left == 0:
                card.go_home()
        elif t >= card.busy_until and rng.random() < 0.004:
            # a real trip abroad: a few purchases in another country
            card.country = rng.choice([k for k in TRAVEL_COUNTRIES if k != p["home_country"]])
            base = CITIES[card.country]
            card.lat, card.lon = base[0] + rng.gauss(0, 0.2), base[1] + rng.gauss(0, 0.2)
            card.trip_left = rng.randint(3, 12)
        category = _CATEGORY(rng)
        present = rng.random() < CATEGORIES[category][1]
        lat = card.lat + rng.gauss(0, 0.05)
        lon = card.lon + rng.gauss(0, 0.05)
        if present:
            return category, True, lat, lon, card.country
        online_country = p["home_country"] if rng.random() < 0.9 else rng.choice(("US", "GB", "IE"))
        return category, False, lat, lon, online_country

    def _request(self, i: int, t: int, c: int, amount: float, category: str, country: str,
                 present: bool, lat: float, lon: float) -> Record:
        card = self.cards[c]
        channel = "pos" if present else "ecom"
        numbers = {
            "amount": amount,
            "hour": float(card.local_hour(t)),
            "card_present": 1.0 if present else 0.0,
            "event_time_ms": float(t),
        }
        if present:
            numbers["lat"], numbers["lon"] = round(lat, 4), round(lon, 4)
        rec = envelope(CLIENT, CLIENT_VERSION, tags={"channel": channel, "country": country})
        rec.update(
            request_id=f"{self.prefix}-{i:08d}",
            entity_key=card.p["card_id"],
            return_address=RETURN_ADDRESS,
            inputs={
                "numbers": numbers,
                "labels": {"merchant_category": category, "country": country,
                           "channel": channel, "user_id": card.p["user_id"]},
                "refs": {},
            },
            external_state=None,
            internal_state=None,
        )
        return rec


def transactions_with_patterns(
    n: int,
    seed: int = 7,
    profiles: list[Record] | None = None,
    fraud_rate: float = 0.02,
    *,
    start_ms: int = START_MS,
    id_prefix: str = "txn",
) -> Iterator[tuple[Record, str | None]]:
    """``n`` raw Request dicts (envelope from udfs.codec.envelope) with their fraud pattern.

    The pattern is None for a legitimate transaction. Without ``profiles``, one card per
    25 transactions is made with ``profiles(n // 25, seed)``. ``fraud_rate`` is the expected
    share of fraudulent transactions. Request ids are ``<id_prefix>-<seed>-<index>``: pass a
    fresh ``id_prefix`` to send the same data twice into one deployment.
    """
    cards = profiles if profiles is not None else _default_profiles(n, seed)
    sim = _Sim(seed, cards, fraud_rate, start_ms, id_prefix)
    for i, (t, c, pattern, kind) in enumerate(sim.events()):
        if i >= n:
            return
        yield sim.transaction(i, t, c, pattern, kind), pattern


def transactions(
    n: int,
    seed: int = 7,
    profiles: list[Record] | None = None,
    fraud_rate: float = 0.02,
    *,
    start_ms: int = START_MS,
    id_prefix: str = "txn",
) -> Iterator[tuple[Record, int]]:
    """Like :func:`transactions_with_patterns` with a 0/1 label (1 = fraud)."""
    for req, pattern in transactions_with_patterns(
        n, seed, profiles, fraud_rate, start_ms=start_ms, id_prefix=id_prefix
    ):
        yield req, int(pattern is not None)


def _default_profiles(n: int, seed: int) -> list[Record]:
    return profiles(max(1, n // 25), seed)


# --------------------------------------------------------------------------- augment

_PROFILE_NUMBERS = ("avg_amount", "credit_limit", "account_age_days", "home_lat", "home_lon")
_PROFILE_LABELS = ("home_country", "segment")


def card_present_point(request: Mapping[str, Any]) -> Record | None:
    """``{lat, lon, event_time_ms}`` of a card-present request, else None.

    This is what augment keeps per card (keyed state) to compute the next velocity. The
    event time is ``inputs.numbers.event_time_ms``, or the envelope timestamp without it.
    """
    numbers = (request.get("inputs") or {}).get("numbers") or {}
    if numbers.get("card_present") != 1.0 or numbers.get("lat") is None or numbers.get(
            "lon") is None:
        return None
    t = numbers.get("event_time_ms")
    return {
        "lat": float(numbers["lat"]),
        "lon": float(numbers["lon"]),
        "event_time_ms": float(request["timestamp"] if t is None else t),
    }


def augment_features(
    request: Mapping[str, Any],
    profile: Mapping[str, Any] | None,
    previous_card_present: Mapping[str, Any] | None,
) -> tuple[Record, dict[str, float]]:
    """(external_state, internal_state) for one request: the one definition of augmentation.

    ``external_state`` is an rdv.ExternalState dict built from the card's profile; without a
    profile it is empty with ``missing: ["profile"]`` (and a missing profile field is listed
    as ``profile.<field>``) - nothing is invented. ``internal_state`` holds
    ``card_velocity_kmh``, the speed between the card's previous card-present transaction
    (``previous_card_present``, from :func:`card_present_point`) and this one, only when this
    one is card-present and there is a previous one.

    >>> req = {"timestamp": 0, "inputs": {"numbers": {"card_present": 1.0, "lat": 0.0,
    ...        "lon": 1.0, "event_time_ms": 3_600_000.0}, "labels": {}, "refs": {}}}
    >>> ext, internal = augment_features(req, None, {"lat": 0, "lon": 0, "event_time_ms": 0})
    >>> ext["missing"], round(internal["card_velocity_kmh"], 1)
    (['profile'], 111.2)
    """
    if profile is None:
        ext: Record = {"source": PROFILE_SOURCE, "as_of": None, "numbers": {}, "labels": {},
                       "missing": ["profile"]}
    else:
        missing = [f"profile.{k}" for k in _PROFILE_NUMBERS + _PROFILE_LABELS
                   if profile.get(k) is None]
        as_of = profile.get("updated_at")
        ext = {
            "source": PROFILE_SOURCE,
            "as_of": None if as_of is None else int(as_of),
            "numbers": {k: float(profile[k]) for k in _PROFILE_NUMBERS
                        if profile.get(k) is not None},
            "labels": {k: str(profile[k]) for k in _PROFILE_LABELS if profile.get(k) is not None},
            "missing": missing,
        }
    internal: dict[str, float] = {}
    point = card_present_point(request)
    if point is not None and previous_card_present is not None:
        internal["card_velocity_kmh"] = velocity_kmh(previous_card_present, point)
    return ext, internal


def augment(
    stream: Iterable[tuple[Record, T]], profiles_by_card: Mapping[str, Record]
) -> Iterator[tuple[Record, T]]:
    """Augment (request, x) pairs in order, as the streaming job does; ``x`` passes through.

    Keeps the last card-present point per entity key, like augment's keyed state. Requests
    are updated in place (external_state and internal_state set) and yielded.
    """
    last: dict[str, Record] = {}
    for req, x in stream:
        key = req["entity_key"]
        ext, internal = augment_features(req, profiles_by_card.get(key), last.get(key))
        req["external_state"] = ext
        req["internal_state"] = internal
        point = card_present_point(req)
        if point is not None:
            last[key] = point
        yield req, x
