"""DICOM PS3.15 Annex E: the Basic Application Level Confidentiality Profile.

The profile's action table (Table E.1-1, column "Basic Prof.") is not typed
here: it comes from the `dicom-anonymizer` package (Kitware, BSD licence),
which keeps one list of tags per action and updates them with the standard
(`TABLE_EDITION`). The options (Table E.1-1's other columns) are overrides
of that table, written below as short lists; each says which column it
comes from, so it can be checked against the standard.

Actions (PS3.15 Table E.1-1 legend) and what Scanyard does for each:

    X    remove the attribute
    Z    keep it with a zero-length value (an empty sequence for SQ)
    D    replace it by a dummy value of its VR (for a sequence: keep it and
         apply the profile to its items)
    U    replace the UID by one derived from it and the site's secret
    K    keep it
    C    "clean": keep a value of similar meaning without identifying
         information. Dates are cleaned by shifting them (Modified Dates
         option); free text cannot be cleaned reliably by a program, so a
         text attribute under C is kept as it is, and a script that enables
         clean-descriptors must say what else to blank.

Where the table offers a choice that depends on the attribute's Type in the
IOD (X/Z, X/D, Z/D, X/Z/D, X/Z/U*), Scanyard takes the choice that keeps any
IOD valid without knowing which IOD a file follows: Z where Z is offered
(zero length is valid for Type 2 and 3), D for X/D (it may be Type 1), and
U* for X/Z/U* (the sequence stays, its UIDs are replaced).

Private attributes are removed (Table E.1-1, "Private attributes": X), and
so are curve and overlay data (groups 50xx and 60xx). Attributes the table
does not list are kept. The profile applies at every depth of a dataset.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_VR, tag_for_keyword

from imaging.deid_actions import (
    MEDIA_STORAGE_SOP_INSTANCE_UID,
    elements,
    map_values,
    set_dummy,
    set_empty,
)

TABLE_EDITION = "dicomfields_2026c"

# PS3.16 CID 7050 "De-identification Method": the codes written into
# DeidentificationMethodCodeSequence for the profile and each option.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTIONS = {
    "retain-longitudinal-dates": (
        "113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain-modified-dates": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-uids": ("113110", "Retain UIDs Option"),
    "clean-descriptors": ("113105", "Clean Descriptors Option"),
}

# Column "Rtn. Pat. Chars. Opt.": K for these ...
PATIENT_CHARACTERISTICS_KEEP = (
    "EthnicGroup PatientAge PatientSex PatientSexNeutered PatientSize PatientWeight "
    "PregnancyStatus SmokingStatus"
)
# ... and C (free text, kept: see the module's docstring) for these.
PATIENT_CHARACTERISTICS_CLEAN = "Allergies PatientState PreMedication SpecialNeeds"

# Column "Rtn. Dev. Id. Opt.": K.
DEVICE_IDENTITY_KEEP = (
    "CassetteID DetectorID DeviceDescription DeviceLabel DeviceSerialNumber DeviceUID "
    "GantryID GeneratorID LensMake LensModel LensSerialNumber LensSpecification "
    "ManufacturerDeviceClassUID ManufacturerDeviceIdentifier PerformedStationAETitle "
    "PerformedStationGeographicLocationCodeSequence PerformedStationName "
    "PerformedStationNameCodeSequence PlateID ScheduledProcedureStepLocation "
    "ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence "
    "ScheduledStationName ScheduledStationNameCodeSequence ScheduledStudyLocation "
    "ScheduledStudyLocationAETitle SourceManufacturer SourceSerialNumber StationName "
    "TransducerIdentificationSequence TreatmentMachineName UDISequence "
    "UniqueDeviceIdentifier XRayDetectorID XRayDetectorLabel XRaySourceID"
)

# Column "Clean Desc. Opt.": C.
CLEAN_DESCRIPTORS = (
    "AcquisitionComments AcquisitionDeviceProcessingDescription AcquisitionFieldOfViewLabel "
    "AcquisitionProtocolDescription AdditionalPatientHistory AdmittingDiagnosesCodeSequence "
    "AdmittingDiagnosesDescription Allergies BeamDescription BolusDescription "
    "ClinicalTrialSeriesDescription ClinicalTrialTimePointDescription CommentsOnRadiationDose "
    "CommentsOnThePerformedProcedureStep CompensatorDescription "
    "ConceptualVolumeCombinationDescription ConceptualVolumeDescription ContainerDescription "
    "ContrastBolusAgent ContributionDescription DecompositionDescription DerivationDescription "
    "DeviceSettingDescription DischargeDiagnosisDescription DoseReferenceDescription "
    "EntityDescription EntityLabel EntityLongLabel EntityName "
    "EquipmentFrameOfReferenceDescription FixationDeviceDescription FractionGroupDescription "
    "FractionationNotes FrameComments IdentifyingComments ImageComments "
    "ImagingServiceRequestComments Impressions InterlockDescription InterlockOriginDescription "
    "InterpretationDiagnosisDescription InterpretationText LabelText LongDeviceDescription "
    "MakerNote MedicalAlerts MultienergyAcquisitionDescription Occupation PatientComments "
    "PatientState PerformedProcedureStepDescription PrescriptionDescription PrescriptionNotes "
    "PrescriptionNotesSequence PriorTreatmentDoseDescription ProtocolName "
    "RadiationDoseIdentificationLabel RadiationDoseInVivoMeasurementLabel "
    "RadiationGenerationModeDescription RadiationGenerationModeLabel "
    "ReasonForOmissionDescription ReasonForRequestedProcedureCodeSequence ReasonForStudy "
    "ReasonForSuperseding ReasonForTheImagingServiceRequest ReasonForTheRequestedProcedure "
    "ReasonForVisit ReasonForVisitCodeSequence RequestAttributesSequence "
    "RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription "
    "RequestedSeriesDescription RespiratoryMotionCompensationTechniqueDescription "
    "ResultsComments ROIDescription ROIGenerationDescription ROIName ROIObservationDescription "
    "ROIObservationLabel RTPhysicianIntentNarrative RTPlanDescription RTPlanLabel RTPlanName "
    "RTPrescriptionLabel RTToleranceSetLabel RTTreatmentApproachLabel "
    "ScheduledProcedureStepDescription SeriesDescription ServiceEpisodeDescription "
    "SetupTechniqueDescription ShieldingDeviceDescription SpecimenDetailedDescription "
    "SpecimenShortDescription StructureSetDescription StructureSetLabel StructureSetName "
    "StudyComments StudyDescription TreatmentPositionGroupLabel TreatmentSite "
    "TreatmentTechniqueNotes TreatmentToleranceViolationDescription UserContentLabel "
    "UserContentLongLabel VisitComments"
)

# Column "Rtn. UIDs Opt.": K for every U and X/Z/U* attribute, and for these
# two sequences of references (Referenced Patient Sequence stays X).
UIDS_KEEP_SEQUENCES = "ReferencedStudySequence ReferencedPerformedProcedureStepSequence"

# Column "Rtn. Long. Full Dates Opt." is K, and "Rtn. Long. Modif. Dates Opt."
# is C, for every date and time attribute of the table except the patient's
# birth date and time (which have no option), and for Timezone Offset From UTC.
DATE_VRS = ("DA", "DT", "TM")
BIRTH = frozenset((0x00100030, 0x00100032))
TIMEZONE_OFFSET = 0x00080201

# How a choice between actions is taken (see the module's docstring).
_CHOSEN = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U",
    "Z_D_TAGS": "Z", "X_Z_TAGS": "Z", "X_D_TAGS": "D", "X_Z_D_TAGS": "Z",
    "X_Z_U_STAR_TAGS": "U*",
}


def tags_of(keywords: str) -> frozenset[int]:
    """Return the tags of space-separated DICOM keywords; raise KeyError on an unknown one."""
    tags = set()
    for keyword in keywords.split():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"unknown DICOM keyword {keyword}")
        tags.add(tag)
    return frozenset(tags)


@dataclass(frozen=True)
class Table:
    """The profile's action for each tag, options applied.

    `exact` maps a tag to its action; `masked` holds (group, element,
    group mask, element mask, action) for repeating groups (curves, overlays).
    """

    exact: dict
    masked: tuple

    def action(self, tag: int) -> str:
        """Return the action for `tag` ("K" when the table does not list it)."""
        if tag >> 16 & 1:
            return "X"  # private attributes
        found = self.exact.get(tag)
        if found is not None:
            return found
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, g_mask, e_mask, action in self.masked:
            if group & g_mask == g and element & e_mask == e:
                return action
        return "K"


def _basic_table() -> tuple[dict, list]:
    exact, masked = {}, []
    lists = dicom_anonymization_database_selector(TABLE_EDITION)
    for name, action in _CHOSEN.items():
        for entry in lists[name]:
            if len(entry) == 2:
                exact[entry[0] << 16 | entry[1]] = action
            else:
                masked.append((*entry, action))
    return exact, masked


def _is_date_attribute(tag: int) -> bool:
    if tag in BIRTH:
        return False
    if tag == TIMEZONE_OFFSET:
        return True
    try:
        return dictionary_VR(tag) in DATE_VRS
    except KeyError:
        return False


@functools.lru_cache(maxsize=32)
def build_table(options: frozenset[str] = frozenset()) -> Table:
    """Return the Basic Profile's table with `options` (names from OPTIONS) applied.

    The table is shared between callers (cached): do not change it.
    """
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown profile option(s): {', '.join(sorted(unknown))}")
    exact, masked = _basic_table()
    overrides: dict[int, str] = {}
    if "retain-longitudinal-dates" in options or "retain-modified-dates" in options:
        # Full dates keep them (K); modified dates shift them (C).
        action = "K" if "retain-longitudinal-dates" in options else "C"
        overrides.update({t: action for t in exact if _is_date_attribute(t)})
    if "retain-uids" in options:
        overrides.update({t: "K" for t, a in exact.items() if a in ("U", "U*")})
        overrides.update(dict.fromkeys(tags_of(UIDS_KEEP_SEQUENCES), "K"))
    if "retain-patient-characteristics" in options:
        keep = tags_of(PATIENT_CHARACTERISTICS_KEEP) | tags_of(PATIENT_CHARACTERISTICS_CLEAN)
        overrides.update(dict.fromkeys(keep, "K"))
    if "retain-device-identity" in options:
        overrides.update(dict.fromkeys(tags_of(DEVICE_IDENTITY_KEEP), "K"))
    if "clean-descriptors" in options:
        overrides.update(dict.fromkeys(tags_of(CLEAN_DESCRIPTORS), "K"))
    exact.update(overrides)
    return Table(exact=exact, masked=tuple(masked))


def apply_profile(ds, table: Table, kept: dict, uid, shift) -> Counter:
    """Apply `table` to every element of `ds` at every depth, and to the file meta's UID.

    `uid` maps an old UID to its replacement, `shift` a DA/DT value to its
    shifted text. Returns a count of what was done per action name.
    """
    done: Counter = Counter()
    for owner, tag in elements(ds, kept):
        action = table.action(tag)
        if action == "K":
            continue
        if action == "X":
            del owner[tag]
            done["removed"] += 1
            continue
        elem = owner[tag]
        if _apply_action(elem, action, uid, shift):
            done[_DONE[action]] += 1
    meta = getattr(ds, "file_meta", None)
    if meta is not None and table.action(MEDIA_STORAGE_SOP_INSTANCE_UID) == "U":
        if MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
            map_values(meta[MEDIA_STORAGE_SOP_INSTANCE_UID], uid)
    return done


_DONE = {"Z": "emptied", "D": "replaced by dummies", "U": "UIDs replaced",
         "U*": "UIDs replaced", "C": "dates shifted"}


def _apply_action(elem, action: str, uid, shift) -> bool:
    """Apply one of Z, D, U, U*, C to `elem`; return True when it changed."""
    if elem.VR == "SQ":
        if action == "Z":
            changed = len(elem.value) > 0
            set_empty(elem)
            return changed
        return False  # D, U* and C on a sequence: its items are cleaned as the walk goes on
    if action == "Z":
        if elem.is_empty:
            return False
        set_empty(elem)
        return True
    if action == "D":
        set_dummy(elem, uid)
        return True
    if action in ("U", "U*"):
        return elem.VR == "UI" and map_values(elem, uid)
    if action == "C" and elem.VR in ("DA", "DT"):
        return map_values(elem, lambda text: shift(text, elem.VR))
    return False
