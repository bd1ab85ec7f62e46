"""The 52 Bactrian-X languages (the mBART-50 set) and lookups by code, locale, FLORES-200 code or name."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, the Bactrian-X dataset config name
    name: str  # English name
    locale: str  # mBART-50 locale, e.g. af_ZA
    script: str  # ISO 15924
    flores: str  # FLORES-200 / NLLB code, e.g. afr_Latn


_TABLE = """
af Afrikaans af_ZA Latn afr_Latn
ar Arabic ar_AR Arab arb_Arab
az Azerbaijani az_AZ Latn azj_Latn
bn Bengali bn_IN Beng ben_Beng
cs Czech cs_CZ Latn ces_Latn
de German de_DE Latn deu_Latn
en English en_XX Latn eng_Latn
es Spanish es_XX Latn spa_Latn
et Estonian et_EE Latn est_Latn
fa Persian fa_IR Arab pes_Arab
fi Finnish fi_FI Latn fin_Latn
fr French fr_XX Latn fra_Latn
gl Galician gl_ES Latn glg_Latn
gu Gujarati gu_IN Gujr guj_Gujr
he Hebrew he_IL Hebr heb_Hebr
hi Hindi hi_IN Deva hin_Deva
hr Croatian hr_HR Latn hrv_Latn
id Indonesian id_ID Latn ind_Latn
it Italian it_IT Latn ita_Latn
ja Japanese ja_XX Jpan jpn_Jpan
ka Georgian ka_GE Geor kat_Geor
kk Kazakh kk_KZ Cyrl kaz_Cyrl
km Khmer km_KH Khmr khm_Khmr
ko Korean ko_KR Hang kor_Hang
lt Lithuanian lt_LT Latn lit_Latn
lv Latvian lv_LV Latn lvs_Latn
mk Macedonian mk_MK Cyrl mkd_Cyrl
ml Malayalam ml_IN Mlym mal_Mlym
mn Mongolian mn_MN Cyrl khk_Cyrl
mr Marathi mr_IN Deva mar_Deva
my Burmese my_MM Mymr mya_Mymr
ne Nepali ne_NP Deva npi_Deva
nl Dutch nl_XX Latn nld_Latn
pl Polish pl_PL Latn pol_Latn
ps Pashto ps_AF Arab pbt_Arab
pt Portuguese pt_XX Latn por_Latn
ro Romanian ro_RO Latn ron_Latn
ru Russian ru_RU Cyrl rus_Cyrl
si Sinhala si_LK Sinh sin_Sinh
sl Slovenian sl_SI Latn slv_Latn
sv Swedish sv_SE Latn swe_Latn
sw Swahili sw_KE Latn swh_Latn
ta Tamil ta_IN Taml tam_Taml
te Telugu te_IN Telu tel_Telu
th Thai th_TH Thai tha_Thai
tl Tagalog tl_XX Latn tgl_Latn
tr Turkish tr_TR Latn tur_Latn
uk Ukrainian uk_UA Cyrl ukr_Cyrl
ur Urdu ur_PK Arab urd_Arab
vi Vietnamese vi_VN Latn vie_Latn
xh Xhosa xh_ZA Latn xho_Latn
zh Chinese zh_CN Hans zho_Hans
"""

LANGUAGES: tuple[Language, ...] = tuple(Language(*line.split()) for line in _TABLE.strip().splitlines())
CODES: tuple[str, ...] = tuple(lang.code for lang in LANGUAGES)

_INDEX: dict[str, Language] = {}
for _lang in LANGUAGES:
    for _key in (_lang.code, _lang.locale, _lang.flores, _lang.name):
        _INDEX[_key.lower()] = _lang


def get(key: str) -> Language:
    """Look a language up by ISO code, mBART-50 locale, FLORES-200 code or English name (any case)."""
    found = _INDEX.get(key.strip().lower())
    if found is None:
        close = difflib.get_close_matches(key.strip().lower(), _INDEX.keys(), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown language {key!r}.{hint} Valid codes: {', '.join(CODES)} (or 'all')."
        )
    return found


def is_known(key: str) -> bool:
    return key.strip().lower() in _INDEX


def parse_langs(spec: str | list[str] | None) -> list[str]:
    """Turn 'fr,de', ['fr', 'de'] or 'all' into a list of ISO codes, in the order given, without repeats."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else [part for item in spec for part in item.split(",")]
    codes: list[str] = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        expanded = list(CODES) if item.lower() == "all" else [get(item).code]
        codes.extend(code for code in expanded if code not in codes)
    return codes
