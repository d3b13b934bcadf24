"""Action modules: what @jsorc_action marks, the spec a module exposes, and how a JSON object
of parameters becomes a call (Jaseci's conventions: "*args"/"**kwargs" keys, omitted means
default, unknown keys and type mismatches refused, lax coercion like "21" -> 21)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from jsorc_live.actions.registry import (
    ActionArgumentError,
    ActionSpec,
    actions_of,
    find_action,
    jsorc_action,
    spec_of,
)
from tests.jsorc_live import sample_actions

SAMPLE_SPEC = {
    "demo.setup": ["factor"],
    "demo.double": ["x"],
    "demo.twice": ["x"],
    "demo.add": ["a", "b"],
    "demo.gather": ["first", "*rest", "scale", "**extra"],
    "demo.boom": ["msg"],
    "demo.factor": [],
    "demo.nap": ["seconds"],
    "sample_actions.nogroup": ["t"],
}


def module_from_source(name: str, source: str) -> ModuleType:
    module = ModuleType(name)
    exec(textwrap.dedent(source), module.__dict__)
    return module


def test_the_decorator_marks_and_returns_the_function_itself() -> None:
    def f(x: int) -> int:
        return x + 1

    assert jsorc_action(f) is f
    assert jsorc_action(group="g")(f) is f
    assert sample_actions.double(4) == 8  # still an ordinary function


def test_actions_of_a_module_are_its_decorated_functions_in_order() -> None:
    actions = actions_of(sample_actions)
    assert list(actions) == ["setup", "double", "add", "gather", "boom", "factor", "nap",
                             "local_only", "nogroup"]
    assert "helper" not in actions
    double = actions["double"]
    assert (double.name, double.group, double.aliases) == ("double", "demo", ("twice",))
    assert double.keys == ("demo.double", "demo.twice")
    assert actions["nogroup"].group == "sample_actions"  # the module's name, as in Jaseci
    assert actions["gather"].params == ("first", "*rest", "scale", "**extra")
    assert actions["local_only"].allow_remote is False


def test_the_spec_gives_each_alias_its_own_key_and_leaves_local_only_actions_out() -> None:
    actions = actions_of(sample_actions)
    assert spec_of(actions) == SAMPLE_SPEC
    assert spec_of(actions, remote_only=False) == {**SAMPLE_SPEC, "demo.local_only": []}


def test_a_function_imported_into_a_module_is_not_its_action() -> None:
    module = module_from_source("importer", """
        from jsorc_live.actions.registry import jsorc_action
        from tests.jsorc_live.sample_actions import double

        @jsorc_action(name="own", aliases=["mine"])
        def f(a, /, b=1, *, c):
            return a
    """)
    actions = actions_of(module)
    assert list(actions) == ["own"]
    assert actions["own"].keys == ("importer.own", "importer.mine")
    assert actions["own"].params == ("a", "b", "c")


def test_a_name_used_twice_is_refused_naming_both_functions() -> None:
    source = """
        from jsorc_live.actions.registry import jsorc_action

        @jsorc_action(name="same")
        def first(): pass

        @jsorc_action(aliases=("same",))
        def second(): pass
    """
    with pytest.raises(ValueError, match=r"'same' is used by both first and second"):
        actions_of(module_from_source("dup", source))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a-b"}, "action name"),
        ({"name": "class"}, "action name"),
        ({"aliases": ["ok", "not ok"]}, "action name"),
        ({"group": "x y"}, "group"),
    ],
)
def test_names_that_cannot_be_paths_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        jsorc_action(**kwargs)


@dataclass(frozen=True)
class BindCase:
    """Calling ``action`` with ``params`` gives ``args``/``kwargs`` (and ``result``), or fails
    with errors of ``error_types`` at ``error_locs``."""

    id: str
    action: str
    params: dict[str, Any]
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error_types: tuple[str, ...] = ()
    error_locs: tuple[tuple[Any, ...], ...] = ()


BIND_CASES = [
    BindCase("named", "double", {"x": 21}, kwargs={"x": 21}, result=42),
    BindCase("coerced like pydantic's lax mode", "double", {"x": "21"}, kwargs={"x": 21},
             result=42),
    BindCase("omitted means default", "add", {"a": 1}, kwargs={"a": 1.0}, result=3.0),
    BindCase("*args and **kwargs by their literal keys", "gather",
             {"first": 1, "*rest": [2, 3], "scale": 5, "**extra": {"k": "v"}},
             args=[1, 2, 3], kwargs={"scale": 5, "k": "v"},
             result={"first": 1, "rest": [2, 3], "scale": 5, "extra": {"k": "v"}}),
    BindCase("variadics omitted", "gather", {"first": None}, kwargs={"first": None},
             result={"first": None, "rest": [], "scale": 1, "extra": {}}),
    BindCase("missing", "double", {}, error_types=("missing",), error_locs=(("body", "x"),)),
    BindCase("unknown key", "double", {"x": 1, "y": 2}, error_types=("extra_forbidden",),
             error_locs=(("body", "y"),)),
    BindCase("wrong type", "double", {"x": "abc"}, error_types=("int_parsing",),
             error_locs=(("body", "x"),)),
    BindCase("every problem at once", "gather", {"*rest": 5, "zz": 1},
             error_types=("extra_forbidden", "missing", "list_type"),
             error_locs=(("body", "zz"), ("body", "first"), ("body", "*rest"))),
    BindCase("**kwargs may not repeat a parameter given", "gather",
             {"first": 1, "scale": 3, "**extra": {"scale": 2}},
             error_types=("duplicate_argument",), error_locs=(("body", "**extra", "scale"),)),
    BindCase("**kwargs may name one not given, as in Python", "gather",
             {"first": 1, "**extra": {"scale": 2}}, kwargs={"first": 1, "scale": 2},
             result={"first": 1, "rest": [], "scale": 2, "extra": {}}),
]


@pytest.mark.parametrize("case", BIND_CASES, ids=lambda c: c.id)
def test_binding_json_parameters(case: BindCase) -> None:
    spec = actions_of(sample_actions)[case.action]
    if case.error_types:
        with pytest.raises(ActionArgumentError) as info:
            spec.bind(case.params, url="u")
        assert tuple(e["type"] for e in info.value.errors) == case.error_types
        assert tuple(tuple(e["loc"]) for e in info.value.errors) == case.error_locs
        assert all(set(e) == {"loc", "msg", "type"} for e in info.value.errors)
        assert info.value.status == 422
        return
    assert spec.bind(case.params) == (case.args, case.kwargs)
    assert spec.call(case.params) == case.result


def test_positional_only_parameters_go_by_position_with_defaults_filled_in() -> None:
    def f(a: int = 1, b: int = 2, /, c: int = 3, *, d: int = 4) -> tuple[int, ...]:
        return (a, b, c, d)

    spec = ActionSpec.of(f, group="g")
    assert spec.bind({"b": 5}) == ([1, 5], {})
    assert spec.bind({"c": 6, "d": 7}) == ([], {"c": 6, "d": 7})
    assert spec.call({"b": 5, "d": 0}) == (1, 5, 3, 0)


def test_args_after_an_omitted_parameter_fill_it_with_its_default() -> None:
    def f(a: int, b: int = 2, *rest: int) -> list[int]:
        return [a, b, *rest]

    spec = ActionSpec.of(f, group="g")
    assert spec.call({"a": 1, "*rest": [7, 8]}) == [1, 2, 7, 8]
    assert spec.bind({"a": 1, "*rest": ["9"]}) == ([1, 2, 9], {})


def test_parameters_without_annotations_take_any_json_value() -> None:
    def f(x, y=None):  # type: ignore[no-untyped-def]
        return [x, y]

    spec = ActionSpec.of(f, group="g")
    assert spec.call({"x": {"nested": [1, "two"]}}) == [{"nested": [1, "two"]}, None]


@pytest.mark.parametrize(
    ("name", "found"),
    [("double", "double"), ("twice", "double"), ("demo.double", "double"),
     ("demo.twice", "double"), ("sample_actions.nogroup", "nogroup"), ("other.double", None),
     ("missing", None)],
)
def test_an_action_is_found_by_name_alias_or_spec_key(name: str, found: str | None) -> None:
    spec = find_action(actions_of(sample_actions), name)
    assert (spec.name if spec else None) == found


def test_an_argument_error_names_the_parameters() -> None:
    with pytest.raises(ActionArgumentError, match=r"x: Field required") as info:
        actions_of(sample_actions)["double"].bind({}, url="http://h:1")
    assert "demo.double" in str(info.value) and "HTTP 422" in str(info.value)
