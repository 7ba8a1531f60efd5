"""The Locust side of the side-by-side benchmark: ``POST /bank/transaction/outgoing``
to Bank A and Bank B (half the users each) with the twin's payer accounts, as fast as
the users can (no wait time, a closed model), or at a given total rate
(``BENCH_LOCUST_RATE`` requests/s over ``BENCH_LOCUST_USERS`` users, each user at its
share with ``constant_throughput``).

Configured through the environment by ``bench_locust.py``:
``BENCH_LOCUST_PAYERS`` (JSON ``{"bank url": [[account, payee bankgood], ...]}``),
``BENCH_LOCUST_CLASS`` (``fast`` for FastHttpUser, else HttpUser) and
``BENCH_LOCUST_SAMPLES`` (a file this process appends ``monotonic cpu_seconds
requests failures`` to every half second, so the CPU per request is taken over the
steady part of the run, without start-up and import costs).
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from typing import Any

import gevent
from locust import HttpUser, constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

PAYERS: dict[str, list[list[str]]] = json.loads(os.environ.get("BENCH_LOCUST_PAYERS", "{}"))
URLS = sorted(PAYERS)
RATE = float(os.environ.get("BENCH_LOCUST_RATE", "0"))
USERS = int(os.environ.get("BENCH_LOCUST_USERS", "1"))
BASE: Any = FastHttpUser if os.environ.get("BENCH_LOCUST_CLASS", "fast") == "fast" else HttpUser


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sampler(environment: Environment, path: str) -> None:
    with open(path, "a") as out:
        while True:
            stats = environment.stats.total
            out.write(f"{time.monotonic()} {_cpu()} {stats.num_requests} {stats.num_failures}\n")
            out.flush()
            gevent.sleep(0.5)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _start_sampling(environment: Environment, **_kwargs: Any) -> None:
    path = os.environ.get("BENCH_LOCUST_SAMPLES")
    if path:
        gevent.spawn(_sampler, environment, path)


class _Payer(BASE):  # type: ignore[misc]
    abstract = True
    wait_time = constant_throughput(RATE / USERS) if RATE > 0 else constant(0)
    payers: list[list[str]] = []

    @task
    def pay(self) -> None:
        account, bankgood = random.choice(self.payers)
        amount = f"{random.randint(100, 5000) / 100:.2f}"
        self.client.post(
            "/bank/transaction/outgoing",
            data=f'{{"fromAccountNumber":"{account}","toBankgoodNumber":"{bankgood}",'
                 f'"amount":{amount}}}',
            headers={"Content-Type": "application/json"},
            name="/bank/transaction/outgoing",
        )


class BankAPayer(_Payer):
    host = URLS[0] if URLS else "http://127.0.0.1:30081"
    payers = PAYERS.get(host, [])


class BankBPayer(_Payer):
    host = URLS[1] if len(URLS) > 1 else "http://127.0.0.1:30082"
    payers = PAYERS.get(host, [])
