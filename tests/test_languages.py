import pytest

from bactrian import languages
from bactrian.errors import ConfigError


def test_the_52_languages_with_locales_and_scripts():
    assert len(languages.LANGUAGES) == 52
    assert len(set(languages.CODES)) == 52
    assert languages.get("af").locale == "af_ZA"
    assert languages.get("zh").script == "Hans"
    assert languages.get("mn").flores == "khk_Cyrl"


@pytest.mark.parametrize("key", ["fr", "FR", "fr_XX", "French", "fra_Latn"])
def test_lookup_by_code_locale_name_or_flores(key):
    assert languages.get(key).code == "fr"


def test_unknown_code_lists_the_closest_valid_ones():
    with pytest.raises(ConfigError, match=r"Unknown language 'fre'.*Did you mean: .*fr"):
        languages.get("fre")


def test_parse_langs_expands_all_and_keeps_order_without_repeats():
    assert languages.parse_langs("all") == list(languages.CODES)
    assert languages.parse_langs("de,fr,de") == ["de", "fr"]
    assert languages.parse_langs(["de", "German,es"]) == ["de", "es"]
    assert languages.parse_langs(None) == []
