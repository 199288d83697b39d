"""The chapters' prose templates: filled from facts, strict about missing names, all parseable."""

from pathlib import Path

import jinja2
import pytest

from orandnet_lib.book import prose


def _write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def test_a_template_is_filled_with_formatted_numbers_and_branches(tmp_path):
    _write(tmp_path, "09_x/findings.md", "- gain {{ gain|f('+.1f') }} points, share {{ share|f('.0%') }}\n"
                                          "{% if gain > 0 %}\n- it {{ verb }}\n{% endif %}\n\n\n"
                                          "- on {{ splits|and_list }}\n")
    text = prose.render("09_x/findings", {"gain": 2.25, "share": 0.5, "verb": "helps", "splits": ["a", "b", "c"]},
                        root=tmp_path)
    assert text == "- gain +2.2 points, share 50%\n- it helps\n\n- on a, b and c"
    assert prose.render("09_x/findings", {"gain": -1.0, "share": 0.0, "verb": "", "splits": ["a"]},
                        root=tmp_path) == "- gain -1.0 points, share 0%\n\n- on a"


def test_a_missing_value_or_template_is_an_error_that_names_it(tmp_path):
    _write(tmp_path, "09_x/t.md", "{{ present }} and {{ absent }}")
    with pytest.raises(KeyError, match="09_x/t.md uses a value its facts lack: 'absent' is undefined"):
        prose.render("09_x/t", {"present": 1}, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no prose template 09_x/nothere.md"):
        prose.render("09_x/nothere", {}, root=tmp_path)


def test_every_packaged_template_parses():
    names = prose.template_names()
    assert "00_dataset/findings" in names
    env = jinja2.Environment()
    root = Path(prose.__file__).parent / prose.PROSE_DIR
    for name in names:
        env.parse((root / f"{name}.md").read_text())  # raises TemplateSyntaxError with the line
