"""The orders fulfilment chain: reserve inventory -> charge payment -> notify warehouse.

Each step enqueues the next as a child job (same request id and trace), and the
last one hands the `orders.shipped` domain event to the `orders.publish-event` job, which
records it as the log line `order.event_published` (with the order id, reservation and
payment) and returns it as its result: that job is where a real service publishes to its
message bus. Replace the bodies with calls to your services.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from supervisor import Context, PermanentError, job


class LineItem(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class ReserveInventory(BaseModel):
    order_id: str = Field(min_length=1)
    items: list[LineItem] = Field(min_length=1)
    amount_cents: int = Field(gt=0)


class ChargePayment(BaseModel):
    order_id: str
    amount_cents: int = Field(gt=0)
    reservation_id: str


class NotifyWarehouse(BaseModel):
    order_id: str
    reservation_id: str
    payment_id: str


class OrderEvent(BaseModel):
    event: str
    order_id: str
    data: dict[str, str] = {}


@job("orders.reserve-inventory", max_deliver=5, backoff=[5, 30, 120])
async def reserve_inventory(payload: ReserveInventory, ctx: Context) -> dict[str, object]:
    await ctx.progress(10, "checking inventory", step="reserving")
    if ctx.cancelled:
        raise PermanentError("order cancelled before inventory was reserved")
    reservation_id = f"res-{payload.order_id}"
    await asyncio.sleep(0)  # stand-in for the inventory service call
    child = await ctx.enqueue(
        "orders.charge-payment",
        {"order_id": payload.order_id, "amount_cents": payload.amount_cents, "reservation_id": reservation_id},
        idempotency_key=f"charge:{payload.order_id}",
    )
    ctx.log.info("inventory.reserved", order_id=payload.order_id, next_job=child.id)
    return {"reserved": True, "reservation_id": reservation_id, "charge_job": child.id}


@job("orders.charge-payment", max_deliver=5, ack_wait=600)
async def charge_payment(payload: ChargePayment, ctx: Context) -> dict[str, object]:
    await ctx.progress(50, "charging card", step="charging")
    payment_id = f"pay-{payload.order_id}"
    child = await ctx.enqueue(
        "orders.notify-warehouse",
        {"order_id": payload.order_id, "reservation_id": payload.reservation_id, "payment_id": payment_id},
        idempotency_key=f"notify:{payload.order_id}",
    )
    return {"charged": True, "payment_id": payment_id, "notify_job": child.id}


@job("orders.notify-warehouse", max_deliver=3)
async def notify_warehouse(payload: NotifyWarehouse, ctx: Context) -> dict[str, object]:
    await ctx.progress(90, "notifying warehouse", step="notifying")
    shipped = await ctx.enqueue(
        "orders.publish-event",
        {"event": "orders.shipped", "order_id": payload.order_id,
         "data": {"reservation_id": payload.reservation_id, "payment_id": payload.payment_id}},
        idempotency_key=f"shipped:{payload.order_id}",
    )
    return {"notified": True, "event_job": shipped.id}


@job("orders.publish-event", max_deliver=10, backoff="exponential")
def publish_event(payload: OrderEvent, ctx: Context) -> dict[str, str]:
    """Record the domain event; a real service would publish to its bus here (sync handler example)."""
    ctx.log.info("order.event_published", order_event=payload.event, order_id=payload.order_id, **payload.data)
    return {"published": payload.event, "order_id": payload.order_id}
