"""The orders fulfilment workflow: reserve inventory and check for fraud in parallel, then charge
the payment, then notify the warehouse, then publish the `orders.shipped` domain event.

The graph is made in one call (`order_workflow`, `place_order`): every step is a job of its own,
created up front, that waits (`waiting`) until the steps before it completed and reads their
results with `ctx.dependency_results`; nothing runs until the whole graph exists, a step that
fails ends `failed` and the steps after it are cancelled (`on_dependency_failure="cancel"`),
and `job-supervisor workflows get <id>` shows where an order is. The handlers stay small: none of
them knows what comes next. `orders.publish-event` records the event as the log line
`order.event_published` and returns it: that is where a real service publishes to its bus.
Replace the bodies with calls to your services.

Place an order from a shell (the daemon must be running):

    .venv/bin/python -m jobs.orders \
        '{"order_id": "o-1", "items": [{"sku": "book", "quantity": 1}], "amount_cents": 1999}'
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pydantic import BaseModel, Field

from supervisor import Context, Graph, PermanentError, Step, dag, job


class LineItem(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class Order(BaseModel):
    order_id: str = Field(min_length=1)
    items: list[LineItem] = Field(min_length=1)
    amount_cents: int = Field(gt=0)


class OrderRef(BaseModel):
    order_id: str = Field(min_length=1)


def order_workflow(order: Order | dict[str, Any]) -> Graph:
    """The graph of one order: reserve ∥ fraud-check → charge → notify → publish."""
    o = order if isinstance(order, Order) else Order.model_validate(order)
    ref = {"order_id": o.order_id}
    return dag({
        "reserve": Step("orders.reserve-inventory", o.model_dump()),
        "fraud": Step("orders.fraud-check", {"order_id": o.order_id, "amount_cents": o.amount_cents}),
        "charge": Step("orders.charge-payment", {**ref, "amount_cents": o.amount_cents}, after=["reserve", "fraud"]),
        "notify": Step("orders.notify-warehouse", ref, after=["charge"]),
        "publish": Step("orders.publish-event", ref, after=["notify"]),
    })


async def place_order(client: Any, order: Order | dict[str, Any]) -> Any:
    """Create the order's workflow with a `Client` (`SyncClient.workflow` takes the same); its id is
    `order-<order id>`, so placing the same order twice makes nothing twice."""
    o = order if isinstance(order, Order) else Order.model_validate(order)
    return await client.workflow(order_workflow(o), workflow_id=f"order-{o.order_id}", name="orders")


@job("orders.reserve-inventory", max_deliver=5, backoff=[5, 30, 120])
async def reserve_inventory(payload: Order, ctx: Context) -> dict[str, object]:
    await ctx.progress(10, "checking inventory", step="reserving")
    if ctx.cancelled:
        raise PermanentError("order cancelled before inventory was reserved")
    await asyncio.sleep(0)  # stand-in for the inventory service call
    return {"reserved": True, "reservation_id": f"res-{payload.order_id}"}


class FraudCheck(BaseModel):
    order_id: str
    amount_cents: int = Field(gt=0)


@job("orders.fraud-check", max_deliver=5, backoff="exponential")
async def fraud_check(payload: FraudCheck, ctx: Context) -> dict[str, object]:
    """A stand-in for a risk service: very large orders are refused (the workflow then stops)."""
    if payload.amount_cents > 1_000_000:
        raise PermanentError(f"order {payload.order_id} refused by the fraud check")
    ctx.log.info("order.fraud_checked", order_id=payload.order_id, score=0.02)
    return {"approved": True, "score": 0.02}


class ChargePayment(BaseModel):
    order_id: str
    amount_cents: int = Field(gt=0)


@job("orders.charge-payment", max_deliver=5, ack_wait=600)
async def charge_payment(payload: ChargePayment, ctx: Context) -> dict[str, object]:
    reservation = ctx.dependency_results["orders.reserve-inventory"]  # the steps before it, by type
    fraud = ctx.dependency_results["orders.fraud-check"]
    await ctx.progress(50, "charging card", step="charging")
    return {"charged": True, "payment_id": f"pay-{payload.order_id}",
            "reservation_id": reservation["reservation_id"], "fraud_score": fraud["score"]}


@job("orders.notify-warehouse", max_deliver=3)
async def notify_warehouse(payload: OrderRef, ctx: Context) -> dict[str, object]:
    charge = ctx.dependency_results["orders.charge-payment"]
    await ctx.progress(90, "notifying warehouse", step="notifying")
    return {"notified": True, "order_id": payload.order_id, "reservation_id": charge["reservation_id"],
            "payment_id": charge["payment_id"]}


@job("orders.publish-event", max_deliver=10, backoff="exponential")
def publish_event(payload: OrderRef, ctx: Context) -> dict[str, str]:
    """Record the domain event; a real service would publish to its bus here (sync handler example)."""
    notified = ctx.dependency_results["orders.notify-warehouse"]
    data = {"reservation_id": notified["reservation_id"], "payment_id": notified["payment_id"]}
    ctx.log.info("order.event_published", order_event="orders.shipped", order_id=payload.order_id, **data)
    return {"published": "orders.shipped", "order_id": payload.order_id, **data}


def _main(argv: list[str]) -> int:
    """`python -m jobs.orders ORDER_JSON`: place one order and print its workflow's id."""
    from supervisor import SyncClient  # noqa: PLC0415
    from supervisor.config import load_settings  # noqa: PLC0415
    from supervisor.operators.cli.app import redis_url  # noqa: PLC0415  (REDIS_URL, or the embedded Redis)

    order = Order.model_validate(json.loads(argv[1]))
    with SyncClient(redis_url(load_settings(None))) as client:
        ref = client.workflow(order_workflow(order), workflow_id=f"order-{order.order_id}", name="orders")
    print(f"workflow {ref.id}: job-supervisor workflows get {ref.id}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
