"""The books checker: proves from the three stores that every saga ended and money and stock
agree. ``python -m grpcmesh_orders.books --orders O.db --inventory I.db --payments P.db``
prints what it checked and exits 1 if anything does not add up; tests call :func:`audit`.

What it proves (orders' log is the reference; inventory and payments must agree with it):

* every order is terminal (CONFIRMED or CANCELLED);
* reservations = confirmed lines: a confirmed order's reservation is COMMITTED with exactly its
  lines; a cancelled order's is absent or RELEASED; nothing is left RESERVED; each product's
  ``reserved`` is 0 and its ``committed`` is the sum of the confirmed lines;
* one capture per confirmed order: exactly one CAPTURED payment, the order's own, of its total;
* a refund per compensated charge: a cancelled order has no CAPTURED payment, and each payment
  of it that was captured is REFUNDED with exactly one refund;
* nothing belongs to an order orders does not know.

It reads the inventory and payments schemas directly (read-only): an operator's audit of the
reference services, not an API. The stores must be quiet (no saga running) for a clean result.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BooksReport:
    orders: Counter[str] = field(default_factory=Counter)  # state -> count
    captured: int = 0
    refunded: int = 0
    declined: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.orders.items()))
        head = (
            f"orders: {states or 'none'}; payments: {self.captured} captured, "
            f"{self.refunded} refunded, {self.declined} declined"
        )
        if self.balanced:
            return f"{head}\nbooks balance"
        return "\n".join([head, f"{len(self.problems)} problem(s):", *self.problems])


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.is_file():
        raise FileNotFoundError(f"no database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class _Order:
    state: str
    lines: Counter[str]
    total_minor: int | None
    payment_id: str


def audit(orders_db: Path, inventory_db: Path, payments_db: Path) -> BooksReport:
    report = BooksReport()
    problem = report.problems.append
    with _read_only(orders_db) as conn:
        orders = {
            row["order_id"]: _Order(
                row["state"],
                Counter(
                    {line["product_id"]: line["quantity"] for line in json.loads(row["lines"])}
                ),
                row["total_minor"],
                row["payment_id"],
            )
            for row in conn.execute(
                "SELECT order_id, state, lines, total_minor, payment_id FROM orders"
            )
        }
    for order_id, order in orders.items():
        report.orders[order.state] += 1
        if order.state == "PENDING":
            problem(f"order {order_id} is still PENDING")
    _audit_stock(orders, inventory_db, problem)
    _audit_money(orders, payments_db, report)
    return report


def _audit_stock(
    orders: dict[str, _Order], inventory_db: Path, problem: Callable[[str], None]
) -> None:
    sold: Counter[str] = Counter()
    for order in orders.values():
        if order.state == "CONFIRMED":
            sold.update(order.lines)
    with _read_only(inventory_db) as conn:
        items: dict[str, Counter[str]] = defaultdict(Counter)
        for row in conn.execute("SELECT order_id, product_id, quantity FROM reservation_items"):
            items[row["order_id"]][row["product_id"]] += row["quantity"]
        reservations = {
            row["order_id"]: row["state"]
            for row in conn.execute("SELECT order_id, state FROM reservations")
        }
        stock = list(conn.execute("SELECT product_id, reserved, committed FROM stock"))
    for order_id, state in reservations.items():
        reserved_for = orders.get(order_id)
        if reserved_for is None:
            problem(f"reservation {state} for order {order_id} that orders does not know")
            continue
        order = reserved_for
        if state == "RESERVED":
            problem(f"order {order_id} ({order.state}) still holds reserved stock")
        elif order.state == "CONFIRMED" and state != "COMMITTED":
            problem(f"order {order_id} is CONFIRMED but its reservation is {state}")
        elif order.state == "CANCELLED" and state != "RELEASED":
            problem(f"order {order_id} is CANCELLED but its reservation is {state}")
        elif state == "COMMITTED" and items[order_id] != order.lines:
            problem(
                f"order {order_id}: committed {dict(items[order_id])}, lines {dict(order.lines)}"
            )
    for order_id, confirmed in orders.items():
        if confirmed.state == "CONFIRMED" and order_id not in reservations:
            problem(f"order {order_id} is CONFIRMED without a reservation")
    for row in stock:
        product = row["product_id"]
        if row["reserved"] != 0:
            problem(f"{product}: {row['reserved']} unit(s) left reserved")
        if row["committed"] != sold[product]:
            problem(f"{product}: {row['committed']} committed, confirmed lines {sold[product]}")


def _audit_money(orders: dict[str, _Order], payments_db: Path, report: BooksReport) -> None:
    problem = report.problems.append
    with _read_only(payments_db) as conn:
        payments = list(
            conn.execute("SELECT payment_id, order_id, amount_minor, state FROM payments")
        )
        refunds = Counter(
            row["payment_id"] for row in conn.execute("SELECT payment_id FROM refunds")
        )
    captured_by_order: dict[str, list[str]] = defaultdict(list)
    for row in payments:
        payment_id, order_id, state = row["payment_id"], row["order_id"], row["state"]
        report.captured += state == "CAPTURED"
        report.refunded += state == "REFUNDED"
        report.declined += state == "DECLINED"
        paid_for = orders.get(order_id)
        if paid_for is None:
            problem(f"payment {payment_id} ({state}) for order {order_id} orders does not know")
            continue
        order = paid_for
        if state == "CAPTURED":
            captured_by_order[order_id].append(payment_id)
            if order.state != "CONFIRMED":
                problem(f"payment {payment_id} CAPTURED for {order.state} order {order_id}")
        if state == "REFUNDED" and refunds[payment_id] != 1:
            problem(f"payment {payment_id} REFUNDED with {refunds[payment_id]} refund(s)")
        if state == "REFUNDED" and order.state == "CONFIRMED":
            problem(f"payment {payment_id} of CONFIRMED order {order_id} was refunded")
    for order_id, order in orders.items():
        if order.state != "CONFIRMED":
            continue
        captured = captured_by_order.get(order_id, [])
        if len(captured) != 1:
            problem(f"order {order_id} is CONFIRMED with {len(captured)} captured payment(s)")
        elif captured[0] != order.payment_id:
            problem(f"order {order_id} records {order.payment_id}, captured {captured[0]}")
        else:
            amount = next(r["amount_minor"] for r in payments if r["payment_id"] == captured[0])
            if amount != order.total_minor:
                problem(f"order {order_id}: total {order.total_minor}, captured {amount}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpcmesh_orders.books",
        description="Check that every order ended and that stock and money agree with it.",
    )
    parser.add_argument("--orders", type=Path, required=True, help="the orders database")
    parser.add_argument("--inventory", type=Path, required=True, help="the inventory database")
    parser.add_argument("--payments", type=Path, required=True, help="the payments database")
    args = parser.parse_args(argv)
    try:
        report = audit(args.orders, args.inventory, args.payments)
    except (OSError, sqlite3.Error) as exc:
        print(f"cannot read the books: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.balanced else 1


if __name__ == "__main__":
    sys.exit(main())
