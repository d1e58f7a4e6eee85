"""Keys of categories and templates, as request paths and bodies give them."""

from __future__ import annotations

from app.categories.keys import is_category_key
from app.templates.validation import is_key


def test_category_and_template_keys_refuse_a_final_newline() -> None:
    # `$` matches before a final newline: a key taken from a path (`news%0A`) must not pass.
    for check in (is_category_key, is_key):
        assert check("news")
        assert not check("news\n")
        assert not check("news\nx")
