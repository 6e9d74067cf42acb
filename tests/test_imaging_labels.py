"""Labels, scan ids and instance file names."""

import pytest
from pydicom.valuerep import IS, PersonName

from imaging.labels import (
    LabelError,
    check_label,
    check_scan_id,
    instance_filename,
    label_from_header,
    scan_id_from_header,
    unique_scan_id,
)

SHA = "ab" * 32


@pytest.mark.parametrize("value", ["P1", "my-project_2", "a" * 64, "  padded  "])
def test_valid_labels_are_returned_stripped(value):
    assert check_label(value) == value.strip()


@pytest.mark.parametrize(
    "value", ["", "a/../b", "with space", "dot.ted", "a" * 65, "naïve", "x\x00y", "../x"]
)
def test_invalid_labels_are_refused_with_a_sentence(value):
    with pytest.raises(LabelError) as caught:
        check_label(value, "Subject label")
    message = str(caught.value)
    assert message.startswith("Subject label ")
    assert message.endswith(".")
    assert "\x00" not in message


def test_label_error_quotes_the_value_and_states_the_rule():
    with pytest.raises(LabelError) as caught:
        check_label("a/../b", "Subject label")
    assert str(caught.value) == (
        'Subject label "a/../b" may only contain letters, digits, "_" and "-" (1 to 64 characters).'
    )


def test_label_error_shortens_a_very_long_value():
    with pytest.raises(LabelError) as caught:
        check_label("/" * 5000)
    assert len(str(caught.value)) < 250


@pytest.mark.parametrize("value", ["SCANS", "scans", "_unassigned", "Resources", "ASSESSORS"])
def test_reserved_names_are_refused_in_any_case(value):
    with pytest.raises(LabelError, match="reserved"):
        check_label(value, "Session label")


def test_a_label_that_is_not_text_is_refused():
    with pytest.raises(LabelError):
        check_label(None)


@pytest.mark.parametrize("value", ["1", "4.1", "T1_MPRAGE-2", "-1", "_x"])
def test_valid_scan_ids_are_accepted(value):
    assert check_scan_id(value) == value


@pytest.mark.parametrize("value", [".", "..", ".hidden", "a/b", "", "a" * 65, "SCANS"])
def test_dot_names_and_paths_are_refused_as_scan_ids(value):
    with pytest.raises(LabelError):
        check_scan_id(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DOE^JOHN", "DOE_JOHN"),
        (PersonName("DOE^JOHN^^^"), "DOE_JOHN"),
        ("  Brain MRI (contrast) ", "Brain_MRI_contrast"),
        ("../../etc/passwd", "etc_passwd"),
        ("a" * 100, "a" * 64),
        (12345, "12345"),
        ("Ärger", "rger"),
        ("_unassigned", "unassigned"),
    ],
)
def test_header_values_become_labels(value, expected):
    assert label_from_header(value) == expected


@pytest.mark.parametrize("value", [None, "", "   ", "^^^", "SCANS", "Reconstructions"])
def test_header_values_with_nothing_usable_give_the_fallback(value):
    assert label_from_header(value) is None
    assert label_from_header(value, fallback="unknown") == "unknown"


def test_a_header_label_cut_at_64_does_not_end_with_an_underscore():
    assert label_from_header("a" * 63 + "^b") == "a" * 63


@pytest.mark.parametrize(
    ("value", "expected"),
    [(IS("4"), "4"), (7, "7"), ("004", "4"), (" 12 ", "12"), (3.0, "3"), ("1a.b", "1a.b")],
)
def test_series_numbers_become_scan_ids(value, expected):
    assert scan_id_from_header(value) == expected


@pytest.mark.parametrize("value", [None, "", "..", "///"])
def test_missing_or_unusable_series_numbers_give_the_fallback(value):
    assert scan_id_from_header(value) == "0"
    assert scan_id_from_header(value, fallback="unknown") == "unknown"


def test_scan_ids_made_from_headers_are_always_valid():
    for value in ["../x", "1/2", ".5", "a" * 100, "x y"]:
        check_scan_id(scan_id_from_header(value))


def test_a_free_scan_id_is_kept():
    assert unique_scan_id("4", {"1", "2"}) == "4"


def test_a_taken_scan_id_gets_the_next_free_suffix():
    assert unique_scan_id("4", {"4"}) == "4-2"
    assert unique_scan_id("4", {"4", "4-2", "4-3"}) == "4-4"


def test_a_suffixed_scan_id_stays_within_64_characters():
    wanted = "s" * 64
    result = unique_scan_id(wanted, {wanted})
    assert len(result) == 64
    check_scan_id(result)


def test_an_instance_is_named_by_its_uid_when_the_uid_is_plain():
    assert instance_filename("1.2.840.113619.2.1", SHA) == "1.2.840.113619.2.1.dcm"
    assert instance_filename("1.2.3", SHA, suffix="") == "1.2.3"


@pytest.mark.parametrize(
    "uid", [None, "", ".", "..", ".1.2", "1.2/3", "../1", "1.2.3a", "1" * 65, "1.2\x00x"]
)
def test_an_instance_with_an_unsafe_uid_is_named_by_its_hash(uid):
    assert instance_filename(uid, SHA) == f"{SHA}.dcm"
