"""Identifying project, subject and session: first match wins, as in XNAT."""

import re

import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging.routing import (
    HEADER_TAGS,
    Identity,
    Rule,
    header_tags,
    identify,
    parse_comment,
    parse_rule,
)

STUDY_DESCRIPTION = 0x00081030
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_COMMENTS = 0x00104000
STUDY_COMMENTS = 0x00324000
ADDITIONAL_HISTORY = 0x001021B0
INSTITUTION = 0x00080080

HEADER = {
    STUDY_DESCRIPTION: "Brain^Study",
    PATIENT_NAME: "DOE^JOHN",
    PATIENT_ID: "ID 42",
    INSTITUTION: "Lab of PROJ7, room 3",
}


def fields(identity: Identity) -> tuple:
    return identity.project, identity.subject, identity.session


# --- parse_rule ----------------------------------------------------------


def test_a_rule_gives_its_tag_pattern_and_group():
    rule = parse_rule(r"(0008,0080):Lab of (\w+), room (\d+):2", "project")
    assert rule == Rule("project", INSTITUTION, re.compile(r"Lab of (\w+), room (\d+)"), 2)


def test_a_rule_takes_group_one_by_default_and_zero_without_groups():
    assert parse_rule(r"(0008,0080):Lab of (\w+)", "project").group == 1
    assert parse_rule(r"(0008,0080):PROJ\d", "project").group == 0


def test_a_rule_regex_may_contain_colons():
    rule = parse_rule(r"(0010,4000):time:(\d\d:\d\d)", "session")
    assert rule.pattern.pattern == r"time:(\d\d:\d\d)"
    assert rule.group == 1
    assert parse_rule(r"(0010,4000):a:(b):1", "session").pattern.pattern == "a:(b)"


def test_a_rule_tag_may_use_lower_case_hex_and_spaces():
    assert parse_rule("( 0010 , 21b0 ):x", "subject").tag == ADDITIONAL_HISTORY


@pytest.mark.parametrize(
    "text", ["0008,0080:x", "(0008,080):x", "(GGGG,0080):x", "(0008,0080)", "(0008,0080)x", ""]
)
def test_a_rule_with_a_bad_tag_is_refused(text):
    with pytest.raises(ValueError, match="DICOM tag"):
        parse_rule(text, "project")


def test_a_rule_with_a_bad_regex_is_refused():
    with pytest.raises(ValueError, match="invalid regular expression"):
        parse_rule("(0008,0080):(unclosed", "project")


def test_a_rule_without_a_regex_is_refused():
    with pytest.raises(ValueError, match="no regular expression"):
        parse_rule("(0008,0080):", "project")


def test_a_rule_asking_for_a_group_the_regex_lacks_is_refused():
    with pytest.raises(ValueError, match="group 2"):
        parse_rule(r"(0008,0080):Lab (\w+):2", "project")
    with pytest.raises(ValueError, match="group 1"):
        parse_rule(r"(0008,0080):PROJ\d:1", "project")


def test_a_rule_for_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="project, subject or session"):
        parse_rule("(0008,0080):x", "scan")


# --- parse_comment -------------------------------------------------------


def test_a_comment_gives_project_subject_session_and_auto_archive():
    text = "Project:P1 Subject:S-01 Session:S-01_MR1 AA:true"
    assert parse_comment(text) == {
        "project": "P1",
        "subject": "S-01",
        "session": "S-01_MR1",
        "auto_archive": True,
    }


def test_comment_keys_ignore_case_and_values_stop_at_semicolons():
    assert parse_comment("free text; project:P2;SUBJECT:S2; aa:FALSE") == {
        "project": "P2",
        "subject": "S2",
        "auto_archive": False,
    }


def test_a_comment_without_keys_gives_nothing():
    assert parse_comment(None) == {}
    assert parse_comment("") == {}
    assert parse_comment("Subproject:X AA:maybe") == {}


def test_the_first_value_of_a_key_in_a_comment_wins():
    assert parse_comment("Project:A Project:B") == {"project": "A"}


# --- identify ------------------------------------------------------------


def test_defaults_come_from_study_description_patient_name_and_id():
    identity = identify(HEADER)
    assert fields(identity) == ("Brain_Study", "DOE_JOHN", "ID_42")
    assert identity.sources == {"project": "default", "subject": "default", "session": "default"}
    assert identity.auto_archive is None


def test_comments_beat_defaults():
    header = {**HEADER, PATIENT_COMMENTS: "Project:P1 Subject:S1 Session:E1 AA:true"}
    identity = identify(header)
    assert fields(identity) == ("P1", "S1", "E1")
    assert identity.auto_archive is True
    assert set(identity.sources.values()) == {"comment"}


def test_comment_fields_are_searched_in_order_per_field():
    header = {
        **HEADER,
        PATIENT_COMMENTS: "Subject:FROM_PATIENT",
        STUDY_COMMENTS: "Project:FROM_STUDY Subject:IGNORED AA:false",
        ADDITIONAL_HISTORY: "Session:FROM_HISTORY AA:true",
    }
    identity = identify(header)
    assert fields(identity) == ("FROM_STUDY", "FROM_PATIENT", "FROM_HISTORY")
    assert identity.auto_archive is False


def test_rules_beat_comments():
    header = {**HEADER, PATIENT_COMMENTS: "Project:P1 Subject:S1"}
    rules = [parse_rule(r"(0008,0080):Lab of (\w+)", "project")]
    identity = identify(header, rules=rules)
    assert fields(identity) == ("PROJ7", "S1", "ID_42")
    assert identity.sources == {"project": "rule", "subject": "comment", "session": "default"}


def test_the_first_matching_rule_wins_and_non_matching_rules_are_skipped():
    rules = [
        parse_rule(r"(0008,0080):Clinic (\w+)", "project"),
        parse_rule(r"(0008,0080):room (\d+)", "project"),
        parse_rule(r"(0008,0080):Lab of (\w+)", "project"),
    ]
    assert identify(HEADER, rules=rules).project == "3"


def test_a_rule_on_a_missing_tag_does_not_match():
    rules = [parse_rule(r"(0008,1090):(\w+)", "subject")]
    identity = identify(HEADER, rules=rules)
    assert (identity.subject, identity.sources["subject"]) == ("DOE_JOHN", "default")


def test_rule_values_are_made_into_labels():
    rules = [parse_rule(r"(0008,0080):Lab of (.*)", "session")]
    assert identify(HEADER, rules=rules).session == "PROJ7_room_3"


def test_the_receiver_project_beats_rules():
    rules = [parse_rule(r"(0008,0080):Lab of (\w+)", "project")]
    identity = identify(HEADER, receiver_project="SCANNER_PROJ", rules=rules)
    assert identity.project == "SCANNER_PROJ"
    assert identity.sources["project"] == "receiver"


def test_explicit_values_beat_everything_and_are_returned_as_given():
    header = {**HEADER, PATIENT_COMMENTS: "Project:P1 Subject:S1 Session:E1"}
    rules = [parse_rule(r"(0008,0080):Lab of (\w+)", "project")]
    explicit = {"project": "Typed", "subject": "sub 1", "session": None}
    identity = identify(header, explicit=explicit, receiver_project="R", rules=rules)
    assert fields(identity) == ("Typed", "sub 1", "E1")
    assert identity.sources == {"project": "explicit", "subject": "explicit", "session": "comment"}


def test_empty_explicit_values_are_ignored():
    identity = identify(HEADER, explicit={"project": "", "subject": None})
    assert identity.sources["project"] == "default"


def test_header_values_that_clean_to_nothing_fall_through():
    header = {STUDY_DESCRIPTION: "^^^", PATIENT_NAME: "SCANS", PATIENT_ID: "  "}
    identity = identify(header)
    assert fields(identity) == (None, None, None)
    assert identity.sources == {}


def test_hostile_header_values_never_make_paths():
    header = {STUDY_DESCRIPTION: "../../etc", PATIENT_NAME: "a/b", PATIENT_ID: "x\x00y"}
    assert fields(identify(header)) == ("etc", "a_b", "x_y")


def test_a_pydicom_dataset_works_as_the_header():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    ds.PatientComments = "Project:CT_PROJ AA:true"
    identity = identify(ds)
    assert fields(identity) == ("CT_PROJ", "CompressedSamples_CT1", "1CT1")
    assert identity.sources == {
        "project": "comment",
        "subject": "default",
        "session": "default",
        "auto_archive": "comment",
    }


def test_a_dataset_rule_reads_the_tag_by_number():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    rules = [parse_rule(r"(0008,0070):^(\w+?)_", "project")]  # Manufacturer TOSHIBA_MEC
    assert identify(ds, rules=rules).project == "TOSHIBA"


def test_header_tags_list_what_identify_reads():
    assert set(HEADER_TAGS) == {
        STUDY_DESCRIPTION,
        PATIENT_NAME,
        PATIENT_ID,
        PATIENT_COMMENTS,
        STUDY_COMMENTS,
        ADDITIONAL_HISTORY,
    }
    rules = [parse_rule("(0008,0080):x", "project"), parse_rule("(0010,0010):y", "subject")]
    assert header_tags(rules) == (*HEADER_TAGS, INSTITUTION)


def test_identify_reads_no_tag_outside_header_tags():
    class Recording(dict):
        def __contains__(self, tag):
            seen.add(tag)
            return super().__contains__(tag)

    seen: set[int] = set()
    rules = [parse_rule("(0008,0080):x", "project")]
    identify(Recording(HEADER), rules=rules)
    assert seen <= set(header_tags(rules))
