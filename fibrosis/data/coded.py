"""Coded header values, checked against their VR and vocabulary before they reach any output.

Sites type names and record numbers into any tag, coded ones included. A value is written to an
output (manifest, scores, side file) or quoted in a reason or log line only when it can be what
its tag holds: a code string (VR CS: at most 16 characters of A-Z, 0-9, space and ``_``) from the
tag's vocabulary (the DICOM defined terms, plus the terms the ingest config names), or a name
(VR LO: at most 64 characters, no control character or backslash) that does not look like an
identifier. Anything else is replaced by a placeholder that says why, and the value itself is
never shown -- not its length beyond what the VR allows, not a prefix.

One validator per VR (:data:`VR_RULES`), one vocabulary per tag (:data:`VOCABULARIES`); the header
reader (:func:`fibrosis.data.dicom.dicom_meta`) and the labels CSV's hints (view, sex) go through
:func:`coded`, and reasons quote a value only through :func:`quoted`.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

VR = Literal["CS", "LO", "UI"]  # the VRs of the tags checked here
# Placeholders: not valid CS/LO values themselves (angle brackets), so never mistaken for a code.
INVALID = "<invalid>"  # the value breaks its VR (too long, characters the VR does not allow)
OTHER = "<other>"  # a well-formed code outside the tag's vocabulary
WITHHELD = "<withheld>"  # a name-like (LO) value that looks like an identifier: a person name, a number
PLACEHOLDERS = {INVALID: "not a valid {vr} value", OTHER: "not a term of the tag's vocabulary",
                WITHHELD: "looks like a name or an identifier"}

# (max length, allowed characters) per VR: PS3.5 6.2. CS is upper case (values are upper-cased
# before the check, as they always were: 'pa' is PA); leading/trailing spaces are padding.
VR_RULES: dict[str, tuple[int, re.Pattern[str]]] = {
    "CS": (16, re.compile(r"[A-Z0-9 _]*")),
    "LO": (64, re.compile(r"[^\\\x00-\x1f\x7f]*")),
    "UI": (64, re.compile(r"[0-9.]*")),
}
VR_TEXT = {"CS": "CS allows at most 16 of A-Z, 0-9, space and _",
           "LO": "LO allows at most 64 characters, no backslash or control character",
           "UI": "UI allows at most 64 digits and dots"}

# PS3.3 C.7.3.1.1.1 Modality defined terms (current and retired).
MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO "
    "LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN PR PT PX REG RESP RF RG RTDOSE "
    "RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US "
    "VA XA XC CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF".split())
# PS3.16 Annex L Body Part Examined defined terms (those a radiograph's header is likely to carry).
BODY_PARTS = frozenset(
    "ABDOMEN ABDOMENPELVIS ACJOINT ADRENAL AORTA ANKLE ARM AXILLA BACK BLADDER BRAIN BREAST BRONCHUS "
    "BUTTOCK CALCANEUS CALF CAROTID CEREBELLUM CERVIX CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CIRCLEOFWILLIS "
    "CLAVICLE COCCYX COLON CORONARYARTERY CSPINE CTSPINE DUODENUM EAR ELBOW ESOPHAGUS EXTREMITY EYE EYELID "
    "FACE FEMUR FINGER FOOT FOREARM GALLBLADDER HAND HEAD HEADNECK HEART HIP HUMERUS IAC ILEUM ILIUM "
    "JAW JEJUNUM KIDNEY KNEE LARYNX LEG LIVER LSPINE LSSPINE LUNG MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST "
    "NECKCHESTABDOMEN NECKCHESTABDPELV NOSE ORBIT OVARY PANCREAS PAROTID PATELLA PELVIS PENIS PHARYNX "
    "PROSTATE RADIUS RECTUM RIB SACRUM SCAPULA SCLERA SCROTUM SHOULDER SKULL SPINE SPLEEN SSPINE STERNUM "
    "STOMACH SUBMANDIBULAR TESTIS THIGH THORAX THUMB THYMUS THYROID TIBIA TLSPINE TMJ TOE TONGUE TRACHEA "
    "TSPINE ULNA URETER URETHRA UTERUS VAGINA VULVA WHOLEBODY WRIST ZYGOMA".split())
# PS3.3 C.8.11.5.1.2 View Position (DX, CR): the defined terms.
VIEW_POSITIONS = frozenset("AP PA LL RL RLD LLD RLO LLO".split())
# PS3.3 C.7.6.3.1.2 Photometric Interpretation: the enumerated values.
PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
                         "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB"})
SEXES = frozenset({"M", "F", "O"})
VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})

# tag keyword -> (tag, VR, vocabulary or None for a name)
TAGS: dict[str, tuple[str, str, frozenset[str] | None]] = {
    "Modality": ("(0008,0060)", "CS", MODALITIES),
    "BodyPartExamined": ("(0018,0015)", "CS", BODY_PARTS),
    "ViewPosition": ("(0018,5101)", "CS", VIEW_POSITIONS),
    "PhotometricInterpretation": ("(0028,0004)", "CS", PHOTOMETRIC),
    "PatientSex": ("(0010,0040)", "CS", SEXES),
    "VOILUTFunction": ("(0028,1056)", "CS", VOI_FUNCTIONS),
    "Manufacturer": ("(0008,0070)", "LO", None),
    "ManufacturerModelName": ("(0008,1090)", "LO", None),
}
VOCABULARIES = {kw: vocab for kw, (_, _, vocab) in TAGS.items() if vocab is not None}

# A name-like value that carries what identifies a person rather than a device: the PN component
# separator (Doe^Jane), an e-mail or a run of five or more digits (a record number, a date, a
# phone; model numbers have four at most: "Definium 8000", "FCR 5000"). A bare name ("Jane Doe")
# cannot be told from a company's name: it is written as it is.
_IDENTIFIER = re.compile(r"\^|@|\d{5,}")


def vr_problem(value: str, vr: str) -> str:
    """'' when ``value`` is a valid single value of ``vr``; else why not (never quoting it)."""
    limit, chars = VR_RULES[vr]
    if len(value) > limit or not chars.fullmatch(value):
        return f"not a valid {vr} value ({VR_TEXT[vr]})"
    return ""


def coded(value: object, keyword: str, extra: Iterable[str] = ()) -> str:
    """The value a header tag (:data:`TAGS`) may be written as: its code (CS: upper-cased, in the
    tag's vocabulary or ``extra``, the terms the config adds), a name that passed its checks, ""
    when absent, or a placeholder (:data:`INVALID`, :data:`OTHER`, :data:`WITHHELD`)."""
    _, vr, vocabulary = TAGS[keyword]
    text = "" if value is None else str(value).strip()
    if vr == "CS":
        text = text.upper()
    if not text:
        return ""
    if vr_problem(text, vr):
        return INVALID
    if vocabulary is not None:
        return text if text in vocabulary or text in {str(e).strip().upper() for e in extra} else OTHER
    return WITHHELD if _IDENTIFIER.search(text) else text


def uid(value: object) -> str:
    """A UID (VR UI) as written, or "" when it is not one: a value of other characters is not a
    UID and is treated as absent (files without UIDs are handled as such), never written."""
    text = "" if value is None else str(value).strip().rstrip("\0")
    return text if text and not vr_problem(text, "UI") else ""


def quoted(value: str, vr: str = "CS") -> str:
    """``value`` for a reason or log line: ``'PA'``, or a placeholder with what it stands for
    (``<invalid> (not a valid CS value; not shown)``)."""
    if value in PLACEHOLDERS:
        return f"{value} ({PLACEHOLDERS[value].format(vr=vr)}; not shown)"
    return repr(value)


# Ages: a DICOM age string (VR AS, '047Y', '006M', '010W', '003D'), or in a labels CSV a plain
# number of years. Anything else (a formula, a date, a name) is not an age.
_AGE_STRING = re.compile(r"(\d{1,3})\s*([DWMY])")
_YEARS = re.compile(r"\d{1,3}(?:\.\d+)?")
MAX_AGE = 150


def age_string_years(text: str) -> str:
    """Years of a DICOM age string ('47', '0.50'), or "" when ``text`` is not one."""
    m = _AGE_STRING.fullmatch(text.strip().upper())
    if not m:
        return ""
    n, unit = int(m.group(1)), m.group(2)
    years = n / {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[unit]
    return f"{years:g}" if unit == "Y" else f"{years:.2f}"


def age_years(text: str) -> str:
    """An age in years as a labels CSV gives it (``61``, ``0.5``, or an age string ``061Y``);
    "" when it is not an age of 0 to MAX_AGE years."""
    text = text.strip()
    if _YEARS.fullmatch(text) and float(text) <= MAX_AGE:
        return text
    return age_string_years(text)
