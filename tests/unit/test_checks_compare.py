from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from labnet.checks.compare import matches, subset_diff

ROUTE = {"dst": "10.100.5.192/26", "gateway": "192.168.50.74", "dev": "tunl0", "protocol": "bird",
         "flags": ["onlink", "linkdown"], "metric": 0}


def test_subset_of_keys_matches() -> None:
    assert subset_diff({"dst": "10.100.5.192/26", "protocol": "bird"}, ROUTE) == []
    assert subset_diff({}, ROUTE) == []


def test_value_difference_names_path_expected_and_actual() -> None:
    assert subset_diff({"protocol": "boot", "dev": "tunl0"}, ROUTE) == [
        "$.protocol: expected 'boot', actual 'bird'"]


def test_missing_key() -> None:
    assert subset_diff({"prefsrc": "10.0.0.1"}, ROUTE) == ["$.prefsrc: expected '10.0.0.1', actual absent"]


def test_none_means_absent() -> None:
    assert subset_diff({"prefsrc": None}, ROUTE) == []
    assert subset_diff({"gateway": None}, ROUTE) == ["$.gateway: expected absent, actual '192.168.50.74'"]


def test_lists_are_unordered_subsets() -> None:
    assert subset_diff({"flags": ["linkdown"]}, ROUTE) == []
    assert subset_diff({"flags": ["linkdown", "onlink"]}, ROUTE) == []
    diff = subset_diff({"flags": ["dead"]}, ROUTE)
    assert diff == ["$.flags[0]: expected an item matching 'dead', none of 2 actual items does"]
    # each expected item needs its own actual item
    assert subset_diff(["onlink", "onlink"], ["onlink"]) != []


def test_nested_lists_of_objects() -> None:
    actual = {"nexthops": [{"gateway": "10.0.0.2", "weight": 1}, {"gateway": "10.0.0.3", "weight": 2}]}
    assert subset_diff({"nexthops": [{"gateway": "10.0.0.3"}]}, actual) == []
    assert subset_diff({"nexthops": [{"gateway": "10.0.0.9"}]}, actual) != []


def test_exact_mode() -> None:
    assert subset_diff({"dst": "x"}, {"dst": "x", "dev": "y"}, exact=True) == ["$.dev: expected absent, actual 'y'"]
    assert subset_diff([1, 2], [2, 1], exact=True) == ["$[0]: expected 1, actual 2", "$[1]: expected 2, actual 1"]
    assert subset_diff([1], [1, 2], exact=True) == ["$: expected 1 items, actual 2: [1, 2]"]


def test_type_mismatches() -> None:
    assert subset_diff({"a": 1}, [1]) == ["$: expected an object {'a': 1}, actual [1]"]
    assert subset_diff([1], {"a": 1}) == ["$: expected a list [1], actual {'a': 1}"]
    assert subset_diff("1", 1) == ["$: expected '1', actual 1"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_everything_contains_itself(value: object) -> None:
    assert matches(value, value)
    assert matches(value, value, exact=True)
