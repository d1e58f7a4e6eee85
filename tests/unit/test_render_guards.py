"""The in-process guards against one-C-call bombs: weights of containers, NUL and surrogates.

`{% set a = [a, a] %}` doubles a structure at no cost; one comparison, sort, hash or str()
of the result then holds the GIL for minutes. These tests run each such bomb in this
process, where nothing but the guards can stop it: each must fail as a render error
naming the field, quickly. (tests/integration/templates/test_render_pool.py covers the process that
is killed when a guard misses; tests/faults/test_template_bombs.py the running services.)
"""

from __future__ import annotations

import json

import pytest

from app.templates.guards import metered, weight
from app.templates.limits import MAX_WORK_CHARS
from app.templates.rendering import clean_message
from tests.unit.test_rendering import failure, render_sms


def doubled(times: int, *names: str, step: str = "[{0},{0}]", start: str = "[1]") -> str:
    """`{% set a=[1] %}` … then `times` times `{% set a=[a,a] %}` for each name."""
    source = "".join(f"{{% set {name}={start} %}}" for name in names)
    for _ in range(times):
        source += "".join(f"{{% set {name}={step.format(name)} %}}" for name in names)
    return source


BOMBS = {
    "==": doubled(28, "a", "b") + "{{ a == b }}",
    "!=": doubled(28, "a", "b") + "{{ a != b }}",
    "<": doubled(28, "a", "b") + "{{ a < b }}",
    "in": doubled(28, "a", "b") + "{{ b in [a] }}",
    "print": doubled(28, "a") + "{{ a }}",
    "sort": doubled(28, "a", "b") + "{{ [a, b]|sort|length }}",
    "unique": doubled(28, "a", step="({0},{0})", start="(1,)") + "{{ [a]|unique|list }}",
    "string": doubled(28, "a") + "{{ a|string|length }}",
    "tojson": doubled(28, "a") + "{{ a|tojson|length }}",
    "pprint": doubled(28, "a") + "{{ a|pprint|length }}",
    "~": doubled(28, "a") + "{{ (a ~ '')|length }}",
    "%": doubled(28, "a") + "{{ ('%s' % [a])|length }}",
    "format": doubled(28, "a") + "{{ '{}'.format(a)|length }}",
    "join": doubled(28, "a") + "{{ [a]|join|length }}",
    "dict key": doubled(28, "a", step="({0},{0})", start="(1,)") + "{{ {a: 1}|length }}",
    "dict literal": doubled(28, "a", step="{{'x': {0}, 'y': {0}}}", start="{}") + "{{ a }}",
    "dict()": doubled(28, "a", step="dict(x={0}, y={0})", start="dict()") + "{{ a == a }}",
    "eq test": doubled(28, "a", "b") + "{{ a is eq b }}",
    "index": doubled(28, "a", "b") + "{{ [a].index(b) }}",
    "namespace": "{% set ns = namespace(a=[1]) %}{% for _ in range(40) %}"
    "{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a == ns.a }}",
    "batch fill": "{% set a = [1] * 10000 %}{% set b = [1]|batch(100000, fill_with=a)|list %}"
    "{{ b == [[a]] }}",
}


@pytest.mark.parametrize("source", BOMBS.values(), ids=BOMBS.keys())
def test_each_bomb_is_refused_in_process_naming_the_field(source: str) -> None:
    refused = failure(source)
    assert refused.field == "sms.text"
    assert "too big" in str(refused) and str(MAX_WORK_CHARS) in str(refused), str(refused)


def test_weights_count_shared_elements_each_time_and_stop_at_the_limit() -> None:
    leaf = [1]
    assert weight(leaf) == 2 + 8
    assert weight([leaf, leaf]) == 2 + 2 * weight(leaf)
    assert weight({"ab": leaf}) == 2 + (2 + 4) + weight(leaf)
    nested: list[object] = [1]
    with metered(10.0):
        for _ in range(200):  # remembered weights: each step weighs two known items
            nested = [nested, nested]
        assert weight(nested) == MAX_WORK_CHARS + 1


def test_structures_within_the_limit_still_work() -> None:
    source = doubled(12, "a", "b") + "{{ a == b }} {{ [a, b]|sort|length }} {{ a|tojson|length }}"
    nested: list[object] = [1]
    for _ in range(12):
        nested = [nested, nested]
    assert render_sms(source) == f"True 2 {len(json.dumps(nested))}"
    loops = "{% for x in range(300) %}{% if x in [1, 2] and x == 2 %}{{ x }}{% endif %}{% endfor %}"
    assert render_sms(loops) == "2"
    assert render_sms("{% for k, v in {'a': 1}|dictsort %}{{ k }}={{ v }}{% endfor %}") == "a=1"
    assert render_sms("{{ items|length }} {{ items[0] }}", items=list(range(50_000))) == "50000 0"


def test_a_namespace_that_changes_is_weighed_again() -> None:
    # A weight remembered for a list holding a namespace would go stale when the namespace
    # changes; the later comparison must see the new weight.
    source = (
        "{% set ns = namespace(x=1) %}{% set pair = [ns, ns] %}{{ pair == pair }}"
        + doubled(24, "big")
        + "{% set ns.x = big %}{{ pair == [ns, ns] }}"
    )
    assert "too big" in str(failure(source))


def test_nul_and_lone_surrogates_in_the_output_are_refused_naming_the_field() -> None:
    assert str(failure('{{ "a\\x00b" }}')) == (
        "the rendered text holds NUL (\\u0000): no channel carries it"
    )
    assert failure("{{ '%c' % 0 }}").field == "sms.text"
    assert "lone surrogate" in str(failure('{{ "\\ud800" }}'))


def test_error_messages_are_fit_for_a_text_column() -> None:
    assert clean_message("bad \x00 value \ud800") == "bad \\x00 value \\ud800"
    assert len(clean_message("x" * 10_000)) == 500
    message = str(failure('{{ {}["\\x00" ~ "y" * 3000] }}'))
    assert "\x00" not in message and len(message) <= 500
