"""The plan caches: most recently used first, bounded in entries and, when weighed, in total weight."""

from __future__ import annotations

from engine_host.pipeline.recently_used import RecentlyUsed


def test_least_recently_used_entry_goes_first() -> None:
    cache: RecentlyUsed[str, int] = RecentlyUsed(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_weighed_entries_are_dropped_until_the_rest_fit_the_budget() -> None:
    cache: RecentlyUsed[str, str] = RecentlyUsed(100, max_weight=10, weight=lambda key, value: len(value))
    cache.put("a", "xxxx")
    cache.put("b", "xxxx")
    cache.put("c", "xxxx")  # 12 > 10: "a" goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, "xxxx", "xxxx")
    cache.put("b", "x")  # replacing an entry counts only its new weight
    cache.put("d", "xxxx")
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == ("x", "xxxx", "xxxx")


def test_an_entry_heavier_than_the_whole_budget_is_not_kept_and_evicts_nothing() -> None:
    cache: RecentlyUsed[str, str] = RecentlyUsed(100, max_weight=10, weight=lambda key, value: len(value))
    cache.put("small", "xx")
    cache.put("huge", "x" * 11)
    assert (cache.get("small"), cache.get("huge")) == ("xx", None)
