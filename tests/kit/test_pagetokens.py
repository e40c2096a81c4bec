"""Page tokens: round trip, tamper evidence, and one key per database shared by replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpcmesh_kit import InvalidArgument, PageTokens, Store


async def test_replicas_on_one_database_share_the_key_and_others_do_not(tmp_path: Path) -> None:
    stores = [Store(tmp_path / name, []) for name in ("shared.db", "shared.db", "other.db")]
    for store in stores:
        await store.open()
    try:
        a, b, other = [await PageTokens.from_store(store) for store in stores]
    finally:
        for store in stores:
            await store.close()
    token = a.encode({"before": 7, "customer_id": "c"})
    assert b.decode(token) == {"before": 7, "customer_id": "c"}
    with pytest.raises(InvalidArgument) as refused:
        other.decode(token)
    assert refused.value.field == "page_token"


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t.replace(".", ".A", 1),
        lambda t: "e30" + t[t.index(".") :],  # {} with the original signature
        lambda t: t.split(".")[0],
        lambda t: "!!!." + t.split(".")[1],
        lambda t: t + "=" * 2000,
        lambda t: "",
    ],
)
def test_any_edit_is_refused(forge: object) -> None:
    tokens = PageTokens(b"s" * 32, field="cursor")
    token = tokens.encode({"after": "sku-1"})
    with pytest.raises(InvalidArgument) as refused:
        tokens.decode(forge(token))  # type: ignore[operator]
    assert str(refused.value) == "cursor: is not a token this server issued"


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokens(b"short")
