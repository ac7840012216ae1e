"""``/metrics``: the project in the Prometheus text format, from the official client library.

Two sources, read when scraped, nothing kept between scrapes:
- the database, for what every server shares (duties by model and state, citizens connected,
  resting and blocked), read through the dashboard's own reader like any page (never the
  leasing pool) and shared for ``fresh`` seconds;
- the server beside the dashboard, for what it did itself since it started (leases, results,
  replicas by outcome, batch timings, its connections and its database pool), labelled
  ``server`` with its id's first 8 characters. A dashboard without a server has none of these.

The families are built at each scrape by one collector on a registry of this application's own
(tests run many servers in one process; the library's global registry would mix them). No
label names a citizen, a volunteer or a duty: their number grows without bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)

from civic import __version__
from civic.errors import CivicError
from civic.server.stats import Timing
from civic.store import metrics as store
from civic.web.app import KEY, dashboard, log

if TYPE_CHECKING:
    from civic.server.service import Server

routes = web.RouteTableDef()

# psycopg_pool's figures (AsyncConnectionPool.get_stats()): (stat, metric, type, help).
POOL = (
    ("pool_size", "civic_db_pool_size", "gauge", "Connections the pool holds now"),
    ("pool_available", "civic_db_pool_available", "gauge", "Connections idle in the pool"),
    ("pool_max", "civic_db_pool_max", "gauge", "Connections the pool may hold at most"),
    ("requests_waiting", "civic_db_pool_requests_waiting", "gauge",
     "Requests waiting for a connection now"),
    ("requests_num", "civic_db_pool_requests", "counter", "Connections asked of the pool"),
    ("requests_queued", "civic_db_pool_requests_queued", "counter",
     "Requests that had to wait for a connection"),
    ("requests_errors", "civic_db_pool_requests_errors", "counter",
     "Requests that got no connection (timed out or failed)"),
)


class Collector:
    """Builds every family at a scrape from ``figures`` (the database's, set by the route just
    before it generates the page; None when the database could not be read) and the server."""

    def __init__(self, server: Server | None) -> None:
        self.server = server
        self.figures: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._database(self.figures)
        if self.server is not None:
            yield from self._server(self.server)

    def _database(self, figures: dict[str, Any] | None) -> Iterator[Metric]:
        up = GaugeMetricFamily("civic_database_up",
                               "1 when this scrape read the database, else 0")
        up.add_metric([], 0 if figures is None else 1)
        yield up
        if figures is None:
            return
        duties = GaugeMetricFamily("civic_duties", "Duties by model and state",
                                   labels=["model", "state"])
        for model, states in figures["duties"].items():
            for state, count in states.items():
                duties.add_metric([model, state], count)
        yield duties
        citizens = GaugeMetricFamily(
            "civic_citizens", "Citizens connected (to any server), resting (a cool-down) and "
            "blocked (themselves or their volunteer)", labels=["state"])
        for state in ("connected", "resting", "blocked"):
            citizens.add_metric([state], figures["citizens"][state])
        yield citizens

    def _server(self, server: Server) -> Iterator[Metric]:
        label = [server.id[:8]]
        info = GaugeMetricFamily("civic_server_info", "This server and its CIVIC version",
                                 labels=["server", "version"])
        info.add_metric([*label, __version__], 1)
        yield info
        scheduler = server.scheduler
        totals, stats = dict(scheduler.totals), scheduler.stats
        for name, key, what in (("civic_leases", "leased", "Replicas leased by this server"),
                                ("civic_results", "results",
                                 "Results received by this server (accepted or refused)")):
            family = CounterMetricFamily(name, what, labels=["server"])
            family.add_metric(label, totals.get(key, 0))
            yield family
        replicas = CounterMetricFamily(
            "civic_replicas", "Replicas by outcome as this server stored them: error and late "
            "(after their duty settled) when their result came, valid and invalid when their "
            "duty settled, expired when it gave them back (deadline passed, citizen gone)",
            labels=["server", "model", "outcome"])
        for (model, outcome), count in sorted(dict(stats.replicas).items()):
            replicas.add_metric([*label, model, outcome], count)
        yield replicas
        yield _histogram("civic_lease_seconds", "Seconds the lease statements of a batch took",
                         label, stats.leases)
        yield _histogram("civic_result_seconds", "Seconds the result statements of a batch "
                         "took (storing, judging, settling)", label, stats.results)
        connected = GaugeMetricFamily("civic_citizens_connected",
                                      "Citizens connected to this server",
                                      labels=["server"])
        connected.add_metric(label, sum(1 for c in list(server.connections)
                                        if c.greeted and not c.gone))
        yield connected
        pool = server.pool.get_stats()
        for stat, name, kind, what in POOL:
            family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                name, what + " (this server's database pool)", labels=["server"])
            family.add_metric(label, pool.get(stat, 0))
            yield family


def _histogram(name: str, what: str, label: list[str], timing: Timing) -> Metric:
    family = HistogramMetricFamily(name, what, labels=["server"])
    counts = list(timing.counts)  # one copy: the buckets and the count agree
    cumulative = Timing(timing.bounds, counts).cumulative()
    family.add_metric(label, cumulative, sum_value=timing.sum)
    return family


REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("metrics", CollectorRegistry)
COLLECTOR: web.AppKey[Collector] = web.AppKey("collector", Collector)


@routes.get("/metrics", name="metrics")
async def metrics(request: web.Request) -> web.Response:
    board = dashboard(request)
    try:
        figures = await board.shared(store.figures)
    except CivicError as exc:  # the server's own figures still tell what is wrong
        log.warning("/metrics: cannot read the database: %s", exc)
        figures = None
    collector = request.app[COLLECTOR]
    collector.figures = figures  # no await from here to the page: no other scrape between
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    collector = Collector(app[KEY].server)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    app[COLLECTOR], app[REGISTRY] = collector, registry
    app.add_routes(routes)
