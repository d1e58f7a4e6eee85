"""Rendering: every channel, locale fallback, strict variables, escaping, the sandbox, limits."""

from __future__ import annotations

import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from app.templates import rendering
from app.templates.content import (
    Content,
    EmailContent,
    InboxContent,
    PushContent,
    SmsContent,
    WebhookContent,
)
from app.templates.limits import MAX_OUTPUT_BYTES
from app.templates.models import TemplateVersion
from app.templates.rendering import RenderFailed, is_personalised, render, source_errors
from app.templates.sandbox import TemplateSandbox
from app.templates.sources import locale_candidates


def version(
    content: dict[str, Any],
    locales: dict[str, Any] | None = None,
    default_locale: str = "en",
) -> TemplateVersion:
    return TemplateVersion(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        key="t",
        version=1,
        name="t",
        category=None,
        default_locale=default_locale,
        content=content,
        locales=locales or {},
        created_at=datetime.now(UTC),
        created_by="test",
    )


def sms(text: str) -> TemplateVersion:
    return version({"sms": {"text": text}})


def render_sms(text: str, **data: Any) -> str:
    content = render(sms(text), "sms", locale=None, data=data, recipient=None)
    assert isinstance(content, SmsContent)
    return content.text


def failure(text: str, **data: Any) -> RenderFailed:
    with pytest.raises(RenderFailed) as raised:
        render_sms(text, **data)
    return raised.value


ALL_CHANNELS = {
    "email": {
        "subject": "Order {{ order_id }}",
        "html": "<p>Hi {{ recipient.name }}</p>",
        "text": "Hi {{ recipient.name }}",
    },
    "sms": {"text": "Order {{ order_id }} shipped"},
    "push": {"title": "Shipped", "body": "{{ order_id }}", "data": {"order": "{{ order_id }}"}},
    "webhook": {
        "body": {"event": "shipped", "order": {"id": "{{ order_id }}"}, "n": 3, "tags": ["{{ a }}"]}
    },
    "inbox": {
        "title": "Shipped",
        "body": "Order {{ order_id }}",
        "action_url": "/o/{{ order_id }}",
    },
}


def test_every_channel_renders_to_its_content_type() -> None:
    template = version(ALL_CHANNELS)
    data = {"order_id": "A-1", "a": "x"}
    person = {"name": "Ada"}

    def run(channel: str) -> Content:
        return render(template, channel, locale=None, data=data, recipient=person)

    assert run("email") == EmailContent(subject="Order A-1", html="<p>Hi Ada</p>", text="Hi Ada")
    assert run("sms") == SmsContent(text="Order A-1 shipped")
    assert run("push") == PushContent(title="Shipped", body="A-1", data={"order": "A-1"})
    assert run("webhook") == WebhookContent(
        body={"event": "shipped", "order": {"id": "A-1"}, "n": 3, "tags": ["x"]}
    )
    assert run("inbox") == InboxContent(title="Shipped", body="Order A-1", action_url="/o/A-1")
    assert template.channels == ["email", "sms", "push", "webhook", "inbox"]


def test_content_round_trips_through_json_with_the_channel_tag() -> None:
    content = render(version(ALL_CHANNELS), "push", locale=None, data={"order_id": 1}, recipient={})
    encoded = msgspec.json.encode(content)
    assert msgspec.json.decode(encoded)["channel"] == "push"
    assert msgspec.json.decode(encoded, type=Content) == content
    assert msgspec.convert({"channel": "sms", "text": "hi"}, Content) == SmsContent(text="hi")


def test_optional_fields_stay_absent() -> None:
    template = version(
        {"email": {"subject": "S", "text": "T"}, "inbox": {"title": "a", "body": "b"}}
    )
    email = render(template, "email", locale=None, data={}, recipient=None)
    assert email == EmailContent(subject="S", html=None, text="T")
    inbox = render(template, "inbox", locale=None, data={}, recipient=None)
    assert inbox == InboxContent(title="a", body="b", action_url=None)


def test_a_channel_the_template_lacks_is_a_render_failure() -> None:
    with pytest.raises(RenderFailed) as raised:
        render(sms("x"), "email", locale=None, data={}, recipient=None)
    assert raised.value.field == "email"


class TestLocales:
    template = version(
        {"sms": {"text": "Hello"}, "email": {"subject": "Hello", "text": "Hello"}},
        locales={
            "fr": {"sms": {"text": "Bonjour"}, "email": {"subject": "Bonjour", "text": "Salut"}},
            "fr-CA": {"sms": {"text": "Allô"}},
        },
    )

    def text(self, channel: str, locale: str | None) -> str:
        content = render(self.template, channel, locale=locale, data={}, recipient=None)
        return content.text  # type: ignore[union-attr,return-value]

    def test_the_most_specific_locale_wins(self) -> None:
        assert self.text("sms", "fr-CA") == "Allô"
        assert self.text("sms", "fr") == "Bonjour"

    def test_fallback_goes_region_then_language_then_default(self) -> None:
        assert self.text("email", "fr-CA") == "Salut"  # fr-CA overrides only sms
        assert self.text("sms", "fr-BE") == "Bonjour"
        assert self.text("sms", "de-DE") == "Hello"
        assert self.text("sms", None) == "Hello"
        assert self.text("sms", "en") == "Hello"

    def test_tags_match_whatever_their_case_or_separator(self) -> None:
        assert self.text("sms", "FR_ca") == "Allô"
        assert self.text("sms", "Fr") == "Bonjour"

    def test_content_for_says_which_locale_was_used(self) -> None:
        assert self.template.content_for("email", "fr-CA").locale == "fr"  # type: ignore[union-attr]
        assert self.template.content_for("sms", "de").locale == "en"  # type: ignore[union-attr]
        assert self.template.content_for("push", "fr") is None

    def test_later_locales_are_fallbacks_each_before_its_language(self) -> None:
        def used(channel: str, *locales: str | None) -> str:
            return self.template.content_for(channel, *locales).path  # type: ignore[union-attr]

        assert used("sms", "de", "fr-CA") == "locales.fr-CA"
        assert used("sms", "de-AT", None, "fr-BE") == "locales.fr"
        assert used("sms", "fr-CA", "fr") == "locales.fr-CA"
        assert used("email", "fr-CA", "de") == "locales.fr"  # fr-CA has no email: its language
        assert used("sms", "de", "it") == "content"
        fallback = render(
            self.template, "sms", locale="de", fallback=(None, "fr"), data={}, recipient=None
        )
        assert fallback.text == "Bonjour"  # type: ignore[union-attr]
        assert locale_candidates("fr-CA", "FR", None, "de_AT") == ["fr-ca", "fr", "de-at", "de"]


class TestStrictVariables:
    def test_a_missing_variable_is_named(self) -> None:
        failed = failure("Order {{ order_id }}")
        assert failed.field == "sms.text"
        assert str(failed) == "'order_id' is undefined"

    def test_a_missing_attribute_is_named(self) -> None:
        assert "has no attribute 'id'" in str(failure("{{ order.id }}", order={}))

    def test_the_field_is_named_down_to_nested_leaves(self) -> None:
        template = version(
            {
                "email": {"subject": "ok", "html": "<p>{{ missing }}</p>"},
                "push": {"title": "t", "body": "b", "data": {"deep link": "{{ nope }}"}},
                "webhook": {"body": {"items": [{"id": "{{ gone }}"}]}},
            }
        )
        expected = {
            "email": ("email.html", "'missing' is undefined"),
            "push": ('push.data["deep link"]', "'nope' is undefined"),
            "webhook": ("webhook.body.items[0].id", "'gone' is undefined"),
        }
        for channel, (field, message) in expected.items():
            with pytest.raises(RenderFailed) as raised:
                render(template, channel, locale=None, data={}, recipient=None)
            assert (raised.value.field, str(raised.value)) == (field, message)

    def test_defaults_and_tests_still_work(self) -> None:
        assert render_sms("{{ name|default('there') }}{% if x is defined %}!{% endif %}") == "there"

    def test_recipient_is_undefined_without_one_and_data_cannot_supply_it(self) -> None:
        assert str(failure("{{ recipient.name }}", recipient={"name": "data"})).startswith(
            "'recipient' is undefined"
        )
        template = sms("{{ recipient.name }}")
        content = render(
            template,
            "sms",
            locale=None,
            data={"recipient": {"name": "x"}},
            recipient={"name": "Ada"},
        )
        assert content == SmsContent(text="Ada")


class TestEscaping:
    template = version(
        {
            "email": {
                "subject": "{{ v }}",
                "html": "<b>{{ v }}</b>{{ s|safe }}",
                "text": "{{ v }}",
            },
            "sms": {"text": "{{ v }}"},
            "webhook": {"body": {"email": {"html": "{{ v }}"}}},
        }
    )
    data = {"v": "<script>&", "s": "<i>ok</i>"}

    def run(self, channel: str) -> Content:
        return render(self.template, channel, locale=None, data=self.data, recipient=None)

    def test_email_html_is_autoescaped(self) -> None:
        email = self.run("email")
        assert isinstance(email, EmailContent)
        assert email.html == "<b>&lt;script&gt;&amp;</b><i>ok</i>"

    def test_text_fields_are_not(self) -> None:
        email = self.run("email")
        assert isinstance(email, EmailContent)
        assert (email.subject, email.text) == ("<script>&", "<script>&")
        assert self.run("sms") == SmsContent(text="<script>&")
        # A webhook field that happens to be called email.html is still text.
        assert self.run("webhook") == WebhookContent(body={"email": {"html": "<script>&"}})

    def test_a_subject_is_one_line(self) -> None:
        template = version({"email": {"subject": "Hi {{ v }}\n", "text": "x"}})
        email = render(template, "email", locale=None, data={"v": "a\r\nBcc: x"}, recipient=None)
        assert email == EmailContent(subject="Hi a Bcc: x", text="x")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ (1).__class__.__base__.__subclasses__() }}",
        "{{ x.items.__self__.__class__ }}",
        "{{ ''|attr('__class__') }}",
    ],
)
def test_the_sandbox_blocks_python_internals(source: str) -> None:
    failed = failure(source, x={"a": 1})
    assert "unsafe" in str(failed), str(failed)


def test_templates_cannot_mutate_data_or_reach_other_templates() -> None:
    assert "unsafe" in str(failure("{{ items.append(1) }}", items=[]))
    assert "unsafe" in str(failure("{{ d.update({'a': 1}) }}", d={}))
    assert "undefined" in str(failure("{{ lipsum(10) }}"))
    errors = source_errors("sms", {"text": "x\n{% include 'other' %}"})
    assert errors == [("text", "line 2: templates cannot include, import or extend others")]
    assert source_errors("sms", {"text": "{% extends 'base' %}"})[0][1].startswith("line 1")


def test_ordinary_templates_work() -> None:
    source = (
        "{% macro item(i) %}{{ i.name|title }} x{{ i.qty }}{% endmacro %}"
        "{% for i in items %}{{ item(i) }}{{ ', ' if not loop.last }}{% endfor %}"
        " | {{ items|map(attribute='name')|join('/') }}"
        " | {{ '%05.1f'|format(total) }} {{ '{:>6}'.format(total) }} {{ (total * 2)|round }}"
        " | {{ items|length }} {{ range(3)|list }} {{ 'a' ~ 1 ~ 'b' }} {{ 'ab' * 2 }}"
        " | {% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}"
        "{% endfor %}{{ ns.n }}{% set block %}x{{ 1 }}{% endset %} {{ block|upper }}"
    )
    items = [{"name": "tea", "qty": 2}, {"name": "cake", "qty": 1}]
    assert render_sms(source, items=items, total=12.25) == (
        "Tea x2, Cake x1 | tea/cake | 012.2  12.25 24.0 | 2 [0, 1, 2] a1b abab | 10 X1"
    )


class TestTimeLimit:
    @pytest.mark.parametrize(
        "source",
        [
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}",
            "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
            "{{ f(60) }}",
            "{% for a in range(100000) %}{{ range(1000)|map('string')|list|length }}{% endfor %}",
            "{% for x in range(20) recursive %}{% if loop.depth < 9 %}{{ loop(range(20)) }}"
            "{% endif %}{% endfor %}",
            "{% for a in range(100000) %}{% for b in range(100000) if b < 0 %}{% endfor %}"
            "{% endfor %}",
        ],
    )
    def test_runaway_templates_stop_just_after_the_limit(self, source: str) -> None:
        started = time.perf_counter()
        failed = failure(source, s="x" * 10_000)
        elapsed = time.perf_counter() - started
        assert str(failed) == "rendering took longer than the 100 ms limit"
        assert failed.field == "sms.text"
        # Unchecked, these run for hours; a loaded CI machine may stretch the 100 ms a little.
        assert elapsed < 5

    def test_each_render_gets_its_own_deadline(self) -> None:
        template = sms("{% for i in range(20000) %}{% endfor %}ok")
        for _ in range(5):
            assert render(template, "sms", locale=None, data={}, recipient=None).text == "ok"  # type: ignore[union-attr]

    def test_recursion_is_a_render_failure(self) -> None:
        failed = failure("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
        # Whichever limit a loaded machine reaches first, the deadline or the recursion
        # depth, the render fails cleanly with a message saying which.
        assert "recursion" in str(failed) or "longer than the 100 ms limit" in str(failed)


class TestSizeLimits:
    @pytest.mark.parametrize(
        "source",
        [
            "{{ 'x' * 1000000000 }}",
            "{{ [1] * 1000000000 }}",
            "{{ 2 ** 100000000 }}",
            "{{ '%01000000000d' % 1 }}",
            "{{ '{:>1000000000}'.format(1) }}",
            "{{ 'x'|center(1000000000) }}",
            "{{ 'x'.ljust(1000000000) }}",
            "{{ ('x' * 100000)|replace('x', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy') }}",
            "{{ range(100000)|join('x' * 100) }}",
            "{{ ('x' * 100).join(range(100000)|map('string')) }}",
            "{{ range(1)|batch(1000000000, 0)|list|length }}",
            "{{ range(1)|slice(1000000000)|list|length }}",
            "{{ range(1000000000)|length }}",
            "{{ ([[1] * 1000] * 1000)|sum(start=[]) }}",
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}",
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
            "{% endfor %}",
            "{% set b = 'x' * 200000 %}{% set c %}{% for i in range(100000) %}{{ b }}{% endfor %}"
            "{% endset %}",
            "{% set b = 'x' * 200000 %}{{ range(100000)|map('center', 200000)|list|length }}",
            "{% set b = 'x' * 200000 %}{% for i in range(100) %}{{ b|upper|length }}{% endfor %}",
            "{% set b = 'x' * 200000 %}{{ [b] * 20000 }}",
            "{% set b = 'x' * 20000 %}{% set l = [b] * 100 %}{{ ([l] * 1000)|string }}",
            "{% set b = 'x' * 20000 %}{% set ns = namespace(l=[b]) %}{% for i in range(30) %}"
            "{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l }}",
            "{% set b = 'x' * 20000 %}{% if false %}{% block blk %}{% for i in range(100000) %}"
            "{{ b }}{% endfor %}{% endblock %}{% endif %}{{ self.blk()|length }}",
        ],
    )
    def test_amplifying_expressions_are_refused_before_they_allocate(self, source: str) -> None:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            failed = failure(source)
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert elapsed < 5  # unchecked, these allocate gigabytes first
        assert peak < 32 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated"
        assert any(
            word in str(failed) for word in ("limit", "characters", "items", "bits", "numbers")
        )

    def test_output_over_256_kib_fails(self) -> None:
        failed = failure("{% for i in range(300) %}{{ 'x' * 1000 }}{% endfor %}")
        assert str(failed) == f"the output is larger than {MAX_OUTPUT_BYTES} bytes"
        assert len(render_sms("{{ 'x' * 262144 }}")) == MAX_OUTPUT_BYTES

    def test_the_limit_covers_all_fields_of_a_channel(self) -> None:
        half = "{{ 'é' * 70000 }}"  # 140,000 bytes of UTF-8 each
        template = version({"email": {"subject": "s", "html": half, "text": half}})
        with pytest.raises(RenderFailed) as raised:
            render(template, "email", locale=None, data={}, recipient=None)
        assert raised.value.field == "email.text"
        assert "larger than 262144 bytes" in str(raised.value)


class TestPersonalisation:
    template = version(
        {
            "sms": {"text": "Hi {{ name }}"},
            "email": {"subject": "{{ recipient.name }}", "text": "x"},
        },
        locales={"fr": {"sms": {"text": "Salut {{ recipient['name'] }}"}}},
    )

    def test_reading_recipient_anywhere_makes_a_channel_personalised(self) -> None:
        assert is_personalised(self.template, "email", None)
        assert not is_personalised(self.template, "sms", None)
        assert not is_personalised(self.template, "sms", "de")
        assert is_personalised(self.template, "sms", "fr-CA")
        assert not is_personalised(self.template, "push", None)

    def test_a_template_defining_recipient_itself_is_not_personalised(self) -> None:
        template = sms("{% set recipient = 'x' %}{{ recipient }}")
        assert not is_personalised(template, "sms", None)


def test_syntax_errors_name_the_line_and_problem() -> None:
    errors = source_errors("email", {"subject": "ok", "html": "<p>\n{{ name }\n</p>"})
    assert len(errors) == 1
    field, message = errors[0]
    assert field == "html"
    assert message.startswith("line 2: unexpected '}'")
    assert source_errors("sms", {"text": "{{ x|nosuchfilter }}"}) == [
        ("text", "line 1: No filter named 'nosuchfilter'.")
    ]
    deep = "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"
    assert source_errors("sms", {"text": deep})[0][1].startswith("cannot be compiled")


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    original = TemplateSandbox.from_string

    def counting(self: TemplateSandbox, source: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(source)
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(TemplateSandbox, "from_string", counting)
    yield seen


def test_compiled_templates_are_cached_per_version_and_field(compilations: list[str]) -> None:
    template = version({"sms": {"text": "{{ a }}"}}, locales={"fr": {"sms": {"text": "{{ a }}!"}}})
    for _ in range(3):
        render(template, "sms", locale=None, data={"a": 1}, recipient=None)
        render(template, "sms", locale="fr", data={"a": 1}, recipient=None)
    assert compilations == ["{{ a }}", "{{ a }}!"]
    other = version({"sms": {"text": "{{ a }}"}})  # another version id: compiled anew
    render(other, "sms", locale=None, data={"a": 1}, recipient=None)
    assert len(compilations) == 3
    assert rendering.COMPILE_CACHE_SIZE >= 100
