"""SMS encoding and segments, email HTML preparation and the plain-text part (no I/O)."""

from __future__ import annotations

import pytest

from nurture.messages.content import (
    html_to_text,
    inline_css_in_source,
    sms_segments,
    text_source_from_html,
    with_preheader,
)


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("", "GSM-7", 0),
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension characters count two septets
        ("€" * 81, "GSM-7", 2),
        ("a" * 152 + "€" + "a" * 10, "GSM-7", 2),  # 164 septets: ESC pair not split
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 3),  # the pair moves whole to part two
        ("Ç ü Ñ à é ¿ §", "GSM-7", 1),
        ("ç", "UCS-2", 1),  # only the capital Ç is in the GSM-7 set
        ("ü" * 70 + "ë", "UCS-2", 2),
        ("ë" * 70, "UCS-2", 1),
        ("ë" * 134, "UCS-2", 2),
        ("ë" * 135, "UCS-2", 3),
        ("😀" * 35, "UCS-2", 1),  # two UTF-16 code units each
        ("😀" * 36, "UCS-2", 2),
        ("a" * 69 + "😀", "UCS-2", 2),  # 71 units
        ("a" * 66 + "😀" + "a" * 66, "UCS-2", 3),  # 134 units, but a pair is never split
    ],
)
def test_sms_encoding_and_segments(body: str, encoding: str, segments: int) -> None:
    # Given an SMS body / When it is measured
    sms = sms_segments(body)
    # Then its encoding and segment count follow 3GPP 23.038
    assert (sms.encoding, sms.segments) == (encoding, segments)


def test_text_part_keeps_links_as_text_and_url() -> None:
    # Given an email's HTML
    html = (
        '<p>Hi <b>Ann</b></p><ul><li>one</li></ul><p><a href="https://x.test/a?b=1&amp;c=2">'
        'shop</a> <a href="#top">top</a></p>'
    )
    # When its text part is made
    text = html_to_text(html)
    # Then words survive, links read "text (url)", in-page anchors are left as text
    assert "Hi Ann" in text
    assert "* one" in text
    assert "shop (https://x.test/a?b=1&c=2)" in text
    assert "top (#top)" not in text and "top" in text


def test_css_is_inlined_into_the_liquid_source_without_moving_markup() -> None:
    # Given HTML whose loop runs between table rows and whose link is a variable
    source = (
        "<html><head><style>td{color:red}</style></head><body><table>"
        "{% for item in event.properties.items %}<tr><td>{{ item.name }}</td></tr>{% endfor %}"
        '</table><a href="{{ links.unsubscribe }}">u</a></body></html>'
    )
    # When its CSS is inlined once
    inlined = inline_css_in_source(source)
    # Then the styles are on the elements and every bit of Liquid is where it was
    assert inlined is not None
    assert '<td style="color: red;">{{ item.name }}</td>' in inlined
    assert inlined.index("{% for item") < inlined.index("<tr>") < inlined.index("{% endfor %}")
    assert 'href="{{ links.unsubscribe }}"' in inlined


def test_markup_the_parser_would_drop_is_inlined_after_rendering() -> None:
    # Given Liquid in the <title> (text the HTML parser escapes) or wrapping a CSS rule
    titled = "<html><head><title>{{ contact.first_name }}</title></head><body>x</body></html>"
    styled = (
        "<html><head><style>{% if x %}p{color:red}{% endif %}</style></head><body></body></html>"
    )
    # Then inlining on the source is refused (the service inlines each render instead)
    assert inline_css_in_source(titled) is None
    assert inline_css_in_source(styled) is None


def test_text_source_is_derived_once_unless_markup_sits_between_table_rows() -> None:
    # Given HTML with Liquid in paragraphs and a link
    simple = (
        '<p>Hi {{ contact.first_name }}</p><p><a href="{{ links.unsubscribe }}">Unsubscribe</a></p>'
    )
    # Then the text part is derived as Liquid source, the link's URL kept as markup
    derived = text_source_from_html(simple)
    assert derived == "Hi {{ contact.first_name }}\n\nUnsubscribe ({{ links.unsubscribe }})\n"
    # Given a loop between table rows, which a text converter would move
    table = (
        "<table>{% for i in event.properties.items %}<tr><td>{{ i }}</td></tr>{% endfor %}</table>"
    )
    # Then no source is derived (the text is made from each rendered HTML)
    assert text_source_from_html(table) is None


def test_preheader_is_the_hidden_first_text_of_the_body() -> None:
    # Given rendered HTML and a preheader with markup characters
    html = with_preheader('<html><body class="x"><p>Hello</p></body></html>', "Save <20%>")
    # Then it is a hidden element right after <body>, escaped
    assert html.startswith('<html><body class="x"><div style="display:none;')
    assert "Save &lt;20%&gt;" in html
    assert html.index("Save") < html.index("<p>Hello")
    assert with_preheader("<p>x</p>", "") == "<p>x</p>"
