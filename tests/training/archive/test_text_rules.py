"""What read text counts as identifying: header values in their spellings, identifier patterns, the allow-list."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from medtl.training.archive.text_rules import (
    MATCH_SCORE,
    TEXT_SCORE,
    HeaderValues,
    header_values,
    judge,
    near,
    pattern_match,
)


@pytest.fixture(scope="module")
def values() -> HeaderValues:
    ds = Dataset()
    ds.PatientName = "Kowalczyk^Margarethe^Anna"
    ds.PatientID = "PID1234567"
    ds.OtherPatientIDs = ["MRN-88776655", "X1"]
    other = Dataset()
    other.PatientID = "NHS 943 476 5919"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientBirthDate = "19620417"
    ds.AccessionNumber = "ACC87654321"
    ds.InstitutionName = "Riverside General Hospital"
    ds.ReferringPhysicianName = "Lindqvist^Dr Ingeborg"
    ds.StudyDate = "20190305"
    return header_values(ds)


@pytest.mark.parametrize(("text", "category"), [
    ("KOWALCZYK^MARGARETHE", "patient name"),
    ("Margarethe Kowalczyk", "patient name"),
    ("kowalczyk, m.", "patient name"),
    ("KOWALCZVK MARGARFTHE", "patient name"),  # two OCR slips
    ("KowalczykMargarethe", "patient name"),  # words run together
    ("PID1234567", "patient ID"),
    ("P1D 1234567", "patient ID"),  # a confusable letter
    ("ID: 1234567", "patient ID"),
    ("MRN 88776655", "patient ID"),
    ("9434765919", "patient ID"),
    ("17.04.1962", "birth date"),
    ("04/17/1962", "birth date"),
    ("DOB 1962-04-17", "birth date"),
    ("17 APR 1962", "birth date"),
    ("April 17, 1962", "birth date"),
    ("17-Apr-1962", "birth date"),
    ("19620417", "birth date"),
    ("ACC87654321", "accession number"),
    ("Acc# 87654321", "accession number"),
    ("RIVERSIDE", "institution"),
    ("Dr. Lindqvist", "staff name"),
    ("05.03.2019", "study date"),
])
def test_header_values_are_found_in_their_spellings(values, text, category):
    assert judge(text, 0.95, values) == ("identifying", category)


@pytest.mark.parametrize(("text", "pattern"), [
    ("Smith^John", "name pattern"),
    ("DOE, JANE", "name pattern"),
    ("12.03.2001", "date"),
    ("2001-3-12", "date"),
    ("3 MAR 2001", "date"),
    ("MRN 99887766", "long number"),
    ("123-45-6789", "long number"),
    ("Fitzgerald", "unlisted word"),
    ("St Aldric Medical Centre", "unlisted word"),
    ("山田 太郎", "unlisted word"),
    ("Иванов", "unlisted word"),
])
def test_identifier_patterns_refuse_without_any_header(text, pattern):
    assert judge(text, 0.95, HeaderValues()) == ("identifying", pattern)
    assert pattern_match(text) == pattern


@pytest.mark.parametrize("text", [
    "L", "R", "AP", "PA", "LAT", "PA ERECT", "AP SUPINE", "L PORTABLE", "80 kV", "2.5 mAs", "120kVp 250mAs",
    "R  80 kV  2.5 mAs", "W:400 L:40", "EI 1234", "CHEST PA", "LEFT KNEE WEIGHT BEARING", "FUJIFILM", "JS",
    "IIIII", "8", "0", "山",
])
def test_overlays_on_the_allow_list_pass(values, text):
    assert judge(text, 0.95, values) == ("allowed", None)


def test_confidence_thresholds(values):
    assert judge("KOWALCZYK", (MATCH_SCORE + TEXT_SCORE) / 2, values) == ("identifying", "patient name")
    assert judge("Fitzgerald", (MATCH_SCORE + TEXT_SCORE) / 2, values) == ("unread", None)  # a guess: not refused
    assert judge("KOWALCZYK", MATCH_SCORE / 2, values) == ("unread", None)
    assert judge("  ", 1.0, values) == ("unread", None)


def test_near_allows_a_few_edits_anywhere():
    assert near("MARGARETHE", "XXMARGARFTHEYY", 1)
    assert near("MARGARETHE", "MRGARETHE", 1)
    assert not near("MARGARETHE", "MARGUERITE", 1)
    assert not near("ABCDE", "AB", 1)


def test_short_name_parts_must_be_whole_words():
    ds = Dataset()
    ds.PatientName = "Li^Ann"
    values = header_values(ds)
    assert values.names == (("patient name", "ANN"),)  # 2-letter parts are too short to compare
    assert judge("ANN", 0.9, values) == ("identifying", "patient name")
    assert judge("PLANNED", 0.9, values)[1] != "patient name"
