"""Which text read from an image identifies someone: the file's own header values, identifier patterns, an allow-list.

A line of recognised text is *identifying* when it holds a value of the file's header (a name in any
order or case, an ID, a date in any common spelling, the accession number, the institution), or when it
looks like an identifier on its own (a date, a run of 5+ digits, `Name^Name` or `Name, Name`, a word of
4+ letters outside the allow-list, two letters in a row of a non-Latin script). It is *allowed* when every word is on the allow-list of anatomical
and technical overlays (laterality, views, positions, kV/mAs values, vendor names) or is 3 letters or
shorter. The header values are held in memory only, to compare with; nothing here writes them, and the
category names (`patient name`, `date`, ...) are the only thing a decision carries out.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from medtl.training.archive.header import BODY_PARTS, MANUFACTURERS

TEXT_SCORE = 0.5
"""Recognition confidence from which a line counts as read (patterns and the allow-list apply)."""
MATCH_SCORE = 0.2
"""Confidence from which a line is compared with the header (a header value read by chance is unlikely)."""
LONG_NUMBER = 5
"""Digits in a row from which a number counts as an identifier (kV, mAs, EI and window values have fewer)."""
UNLISTED_WORD = 4
"""Letters from which a word outside the allow-list counts as a possible name."""

# Header keywords whose values identify someone -> (category named in reasons, how to match).
_NAME, _ID, _DATE, _TEXT = "name", "id", "date", "text"
HEADER_FIELDS: dict[str, tuple[str, str]] = {
    "PatientName": ("patient name", _NAME), "OtherPatientNames": ("patient name", _NAME),
    "PatientBirthName": ("patient name", _NAME), "PatientMotherBirthName": ("patient name", _NAME),
    "PatientID": ("patient ID", _ID), "OtherPatientIDs": ("patient ID", _ID),
    "PatientBirthDate": ("birth date", _DATE),
    "AccessionNumber": ("accession number", _ID),
    "InstitutionName": ("institution", _TEXT), "InstitutionAddress": ("institution", _TEXT),
    "InstitutionalDepartmentName": ("institution", _TEXT),
    "ReferringPhysicianName": ("staff name", _NAME), "PerformingPhysicianName": ("staff name", _NAME),
    "OperatorsName": ("staff name", _NAME), "NameOfPhysiciansReadingStudy": ("staff name", _NAME),
    "PhysiciansOfRecord": ("staff name", _NAME),
    "PatientAddress": ("address", _TEXT), "PatientTelephoneNumbers": ("phone number", _ID),
    "StudyID": ("study ID", _ID), "StationName": ("station name", _TEXT),
    "StudyDate": ("study date", _DATE), "SeriesDate": ("study date", _DATE),
    "AcquisitionDate": ("study date", _DATE), "ContentDate": ("study date", _DATE),
}
# Words too common in institution names and addresses to identify one on their own.
_COMMON_WORDS = frozenset({
    "HOSPITAL", "GENERAL", "MEDICAL", "CENTER", "CENTRE", "CLINIC", "CLINICS", "UNIVERSITY", "SAINT",
    "STREET", "ROAD", "AVENUE", "LANE", "DRIVE", "COURT", "DEPARTMENT", "RADIOLOGY", "IMAGING", "HEALTH",
    "REGIONAL", "COUNTY", "CITY", "NATIONAL", "CHILDREN", "CHILDRENS", "MEMORIAL", "INSTITUTE", "WING",
})

_POSITION_WORDS = """
L R LT RT LEFT RIGHT BILAT BILATERAL AP PA LAT LATERAL LLAT RLAT OBL OBLIQUE SUPINE PRONE ERECT UPRIGHT
STANDING SITTING SEMI DECUB DECUBITUS PORTABLE PORT INSP EXP INSPIRATION EXPIRATION WEIGHT BEARING
FLEX FLEXION EXTENSION VIEW VIEWS FRONTAL AXIAL CORONAL SAGITTAL SCOUT TOPOGRAM SURVIEW LOCALIZER
LOCALISER MARKER GRID STITCHED CROSS TABLE TRAUMA ROUTINE POST CONTRAST ARTERIAL VENOUS DELAYED PHASE
SLICE SERIES IMAGE SCAN TILT HEAD FEET FIRST INFERIOR SUPERIOR ANTERIOR POSTERIOR MEDIAL DISTAL PROXIMAL
UPPER LOWER INTERNAL EXTERNAL ROTATION NEUTRAL STRESS ABDUCTION ADDUCTION OPEN CLOSED MOUTH SWIMMER
"""
_TECHNIQUE_WORDS = """
KVP MAS MSEC MGY DAP SID SOD DOSE EXPOSURE INDEX DEVIATION TARGET SENS SENSITIVITY LATITUDE SPEED
WIDTH LEVEL CENTER CENTRE WINDOW LUNG LUNGS BONE BONES SOFT TISSUE MEDIASTINUM MEDIASTINAL BRAIN ZOOM
SCALE FILTER KERNEL THICKNESS PITCH ROTATE COLLIMATION FOCUS LARGE SMALL FINE
"""
_ANATOMY_WORDS = """
CHEST THORAX ABDOMEN PELVIS SPINE CERVICAL THORACIC LUMBAR SACRUM SKULL FACIAL SINUS SINUSES NASAL
MANDIBLE ORBIT SHOULDER HUMERUS ELBOW FOREARM WRIST HAND HANDS FINGER FINGERS THUMB HIP HIPS FEMUR
KNEE KNEES PATELLA TIBIA FIBULA ANKLE FOOT FEET HEEL CALCANEUS TOES CLAVICLE SCAPULA STERNUM RIBS
"""
_LABEL_WORDS = """
NAME DATE TIME BIRTH PATIENT STUDY EXAM SEX MALE FEMALE YEARS MONTHS WEEKS DAYS WITH WITHOUT FROM ONLY
NONE NORMAL PAGE OVER UNDER AFTER BEFORE
"""
ALLOWED_WORDS: frozenset[str] = frozenset(
    (_POSITION_WORDS + _TECHNIQUE_WORDS + _ANATOMY_WORDS + _LABEL_WORDS).split()
    + [w for words in BODY_PARTS.values() for w in words]
    + [w for spellings in MANUFACTURERS.values() for s in spellings for w in s.split()]
    + ["HEALTHINEERS"]  # of SIEMENS HEALTHINEERS; every other vendor word is in MANUFACTURERS' spellings
)
"""Words an anatomical or technical overlay may hold (upper case); words of 3 letters or fewer always pass."""

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
"""Months as the date rules (and the test set's dates) abbreviate them."""
_MONTH = (r"(?<![A-Z])(JAN(?:UARY)?|FEB(?:RUARY)?|MAR(?:CH)?|APR(?:IL)?|MAY|JUNE?|JULY?|AUG(?:UST)?|"
          r"SEPT?(?:EMBER)?|OCT(?:OBER)?|NOV(?:EMBER)?|DEC(?:EMBER)?)(?![A-Z])\.?")
_DATE_PATTERNS = (
    re.compile(r"(?<!\d)\d{1,2}\s?[./-]\s?\d{1,2}\s?[./-]\s?(\d{4}|\d{2})(?!\d)"),
    re.compile(r"(?<!\d)(1[89]|20)\d{2}\s?[./-]\s?\d{1,2}\s?[./-]\s?\d{1,2}(?!\d)"),
    re.compile(r"(?<!\d)(1[89]|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)"),
    re.compile(r"(?<!\d)\d{1,2}[\s./-]*" + _MONTH + r"[\s.,/-]*\d{2,4}(?!\d)"),
    re.compile(_MONTH + r"[\s.]*\d{1,2}(?:ST|ND|RD|TH)?[\s,./-]+\d{2,4}(?!\d)"),
)
_NAME_PATTERNS = (
    re.compile(r"[A-Z]{2,}\s*\^\s*[A-Z]{2,}"),
    re.compile(r"\b[A-Z][A-Z'-]{2,}\s*,\s*[A-Z][A-Z'-]{2,}\b"),
)


def normalise(text: str) -> str:
    """Upper case without accents (Ä -> A), so that spellings compare alike."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


# OCR confuses these letters and digits; IDs are compared with both sides mapped alike.
_CONFUSABLE = str.maketrans("OQDILSBZG", "000115826")


def _id_form(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", normalise(text)).translate(_CONFUSABLE)


def _date_forms(value: str) -> set[str]:
    """The digit strings a YYYYMMDD date becomes in the common spellings (separators dropped)."""
    digits = re.sub(r"\D", "", value)
    if len(digits) != 8:
        return set()
    y, m, d = digits[:4], digits[4:6], digits[6:]
    forms = set()
    for mm in {m, m.lstrip("0")}:
        for dd in {d, d.lstrip("0")}:
            forms |= {f"{y}{mm}{dd}", f"{dd}{mm}{y}", f"{mm}{dd}{y}", f"{dd}{mm}{y[2:]}", f"{mm}{dd}{y[2:]}",
                      f"{y[2:]}{mm}{dd}"}
    return {f for f in forms if len(f) >= 6}  # shorter spellings keep their separators: `pattern_match` finds them


def _date_digits(text: str) -> list[str]:
    """Digit strings of every date-like span of an upper-case line (month names turned into numbers)."""
    numbered = re.sub(_MONTH, lambda m: f" {MONTHS.index(m.group(1)[:3]) + 1:02d} ", text)
    spans = re.findall(r"\d+(?:[\s./,\-]+\d+){0,2}", numbered)
    return [d for d in (re.sub(r"\D", "", s) for s in spans) if len(d) >= 6]


def near(needle: str, hay: str, edits: int) -> bool:
    """Whether `needle` occurs in `hay` with at most `edits` insertions, deletions or substitutions."""
    if needle in hay:
        return True
    if edits == 0 or len(hay) < len(needle) - edits:
        return False
    previous = [0] * (len(hay) + 1)  # semi-global alignment: the match may start anywhere in hay
    for i, a in enumerate(needle, 1):
        current = [i] + [0] * len(hay)
        for j, b in enumerate(hay, 1):
            current[j] = min(previous[j - 1] + (a != b), previous[j] + 1, current[j - 1] + 1)
        previous = current
    return min(previous) <= edits


@dataclass(frozen=True)
class HeaderValues:
    """A file's identifying header values in the forms they are compared in (memory only, never written)."""

    names: tuple[tuple[str, str], ...] = ()  # (category, one name component, upper case letters)
    ids: tuple[tuple[str, str, str], ...] = ()  # (category, alphanumerics with confusables mapped, its digits)
    dates: tuple[tuple[str, frozenset[str]], ...] = ()  # (category, digit strings of its spellings)
    words: tuple[tuple[str, str], ...] = ()  # (category, a distinctive word of a free-text value)


def header_values(ds: Any) -> HeaderValues:
    """The identifying values of a dataset's header (`HEADER_FIELDS`, incl. other patient IDs), prepared for matching."""
    names, ids, dates, words = set(), set(), set(), set()
    items: list[tuple[str, Any]] = [(k, ds.get(k)) for k in HEADER_FIELDS]
    for item in ds.get("OtherPatientIDsSequence") or []:
        items.append(("PatientID", item.get("PatientID")))
    for keyword, value in items:
        if value in (None, ""):
            continue
        category, kind = HEADER_FIELDS[keyword]
        values = list(value) if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        for one in values:
            text = normalise(str(one))
            if kind == _NAME:
                names |= {(category, part) for part in re.findall(r"[A-Z]+", text) if len(part) >= 3}
            elif kind == _ID:
                form = _id_form(text)
                if len(form) >= 4:
                    ids.add((category, form, re.sub(r"\D", "", text)))
            elif kind == _DATE:
                if forms := _date_forms(text):
                    dates.add((category, frozenset(forms)))
            else:
                words |= {(category, w) for w in re.findall(r"[A-Z]+", text) if len(w) >= 4 and w not in _COMMON_WORDS}
    return HeaderValues(tuple(sorted(names)), tuple(sorted(ids)), tuple(sorted(dates, key=lambda d: d[0])),
                        tuple(sorted(words)))


def _edits(length: int) -> int:
    return 0 if length < 5 else 1 if length < 9 else 2


def header_match(text: str, values: HeaderValues) -> str | None:
    """The category of the first header value the line holds (names in any order or case), or None."""
    upper = normalise(text)
    letters = re.sub(r"[^A-Z]", "", upper)
    line_words = set(re.findall(r"[A-Z]+", upper))
    for category, part in values.names:
        if (part in line_words) if len(part) < 5 else near(part, letters, _edits(len(part))):
            return category
    alnum = _id_form(upper)
    digits = re.sub(r"\D", "", upper)
    for category, form, form_digits in values.ids:
        if near(form, alnum, _edits(len(form)) if len(form) >= 6 else 0):
            return category
        if len(form_digits) >= LONG_NUMBER and form_digits in digits:
            return category
    spans = _date_digits(upper)
    for category, forms in values.dates:
        if any(f in span for span in spans for f in forms):
            return category
    for category, word in values.words:
        if (word in line_words) if len(word) < 6 else near(word, letters, 1):
            return category
    return None


def pattern_match(text: str) -> str | None:
    """The identifier pattern a line matches on its own (`date`, `long number`, `name pattern`, `unlisted word`), or None."""
    upper = normalise(text)
    if any(p.search(upper) for p in _DATE_PATTERNS):
        return "date"
    if re.search(rf"\d{{{LONG_NUMBER},}}", upper) or any(
        len(re.sub(r"\D", "", m)) > LONG_NUMBER for m in re.findall(r"\d+(?:-\d+)+", upper)
    ):
        return "long number"
    for pattern in _NAME_PATTERNS:
        for match in pattern.finditer(upper):
            if not set(re.findall(r"[A-Z]+", match.group(0))) <= ALLOWED_WORDS:
                return "name pattern"
    if any(_wordlike(w) and w not in ALLOWED_WORDS for w in re.findall(r"[A-Z]+", upper)):
        return "unlisted word"
    if re.search(r"[^\W\d_A-Z]{2,}", upper):  # two letters of another script in a row (a name in kanji, Cyrillic, ...)
        return "unlisted word"
    return None


def _wordlike(word: str) -> bool:
    """A word long enough to be a name, and not a run of strokes (`IIII`, `LIl1`) read from an edge."""
    return len(word) >= UNLISTED_WORD and len(set(word)) >= 2 and bool(set(word) - set("ILTJ"))


def judge(text: str, score: float, values: HeaderValues) -> tuple[str, str | None]:
    """Classify one recognised line: (`identifying`, category), (`allowed`, None) or (`unread`, None).

    A header value counts from confidence `MATCH_SCORE`, the patterns and the allow-list from
    `TEXT_SCORE`; below that the line is `unread` (detection fired, nothing was read with confidence).
    """
    if not text.strip():
        return "unread", None
    if score >= MATCH_SCORE and (category := header_match(text, values)) is not None:
        return "identifying", category
    if score < TEXT_SCORE:
        return "unread", None
    if (category := pattern_match(text)) is not None:
        return "identifying", category
    return "allowed", None
