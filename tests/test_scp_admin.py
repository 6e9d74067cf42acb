"""The receiver's admin pages and what the upload page tells senders."""
from __future__ import annotations

from sqlalchemy import select

from models import DicomAssociation, Receiver, RoutingRule, db


def receiver_form(**fields):
    return {"ae_title": "MRI1", "project": "", "enabled": "1", "allowed": "", **fields}


def test_an_admin_creates_edits_and_deletes_a_receiver(app, client, make_project):
    make_project("study1")
    res = client.post("/admin/dicom/receivers/new",
                      data=receiver_form(project="study1", allowed="CONSOLE1\n10.1.0.0/16\n"))
    assert res.status_code == 303
    page = client.get("/admin/dicom/").get_data(as_text=True)
    assert "MRI1" in page and "study1" in page and "CONSOLE1, 10.1.0.0/16" in page
    with app.app_context():
        receiver = db.session.scalar(select(Receiver))
        assert (receiver.project, receiver.enabled, receiver.allowed) == (
            "study1", True, "CONSOLE1\n10.1.0.0/16")
        receiver_id = receiver.id
    res = client.post(f"/admin/dicom/receivers/{receiver_id}", data=receiver_form(enabled=""))
    assert res.status_code == 303
    with app.app_context():
        assert db.session.get(Receiver, receiver_id).enabled is False
    assert client.post(f"/admin/dicom/receivers/{receiver_id}/delete").status_code == 303
    with app.app_context():
        assert db.session.scalar(select(Receiver)) is None


def test_a_bad_receiver_form_is_refused_with_its_reason(app, client, make_project):
    make_project("study1")
    res = client.post("/admin/dicom/receivers/new",
                      data=receiver_form(ae_title="TOO_LONG_AE_TITLE_X"))
    assert res.status_code == 400 and "1 to 16 characters" in res.get_data(as_text=True)
    res = client.post("/admin/dicom/receivers/new", data=receiver_form(ae_title="A\\B"))
    assert res.status_code == 400
    res = client.post("/admin/dicom/receivers/new", data=receiver_form(project="nosuch"))
    assert res.status_code == 404
    res = client.post("/admin/dicom/receivers/new", data=receiver_form(allowed="10.0.0.0/99"))
    assert res.status_code == 400 and "is not a network" in res.get_data(as_text=True)
    client.post("/admin/dicom/receivers/new", data=receiver_form())
    res = client.post("/admin/dicom/receivers/new", data=receiver_form())
    assert res.status_code == 409 and "already exists" in res.get_data(as_text=True)
    assert client.get("/admin/dicom/receivers/999").status_code == 404


def test_routing_rules_are_checked_when_saved(app, client):
    res = client.post("/admin/dicom/rules", data={"field": "project", "rule": "(0008,1030):(x",
                                                  "position": "1", "enabled": "1"})
    text = res.get_data(as_text=True)
    assert res.status_code == 400 and "invalid regular expression" in text
    assert "(0008,1030):(x" in text  # the admin's input is kept to fix it
    res = client.post("/admin/dicom/rules", data={"field": "visit", "rule": "(0008,1030):x"})
    assert res.status_code == 400
    res = client.post("/admin/dicom/rules", data={"field": "subject", "position": "2",
                                                  "rule": r"(0010,0020):^(\w+)", "enabled": "1"})
    assert res.status_code == 303
    with app.app_context():
        rule = db.session.scalar(select(RoutingRule))
        assert (rule.field, rule.rule, rule.position, rule.enabled) == (
            "subject", r"(0010,0020):^(\w+)", 2, True)
        rule_id = rule.id
    res = client.post(f"/admin/dicom/rules/{rule_id}", data={
        "field": "subject", "rule": "(0010,0020):(a)(b):3", "position": "2"})
    assert res.status_code == 400 and "group 3" in res.get_data(as_text=True)
    assert client.post(f"/admin/dicom/rules/{rule_id}/delete").status_code == 303
    assert "No rules" in client.get("/admin/dicom/rules").get_data(as_text=True)


def test_recent_associations_are_listed(app, client):
    with app.app_context():
        db.session.add(DicomAssociation(calling_ae="CONSOLE1", host="10.1.2.3", called_ae="MRI1",
                                        instances=12, bytes=1_500_000, outcome="released"))
        db.session.commit()
    page = client.get("/admin/dicom/associations").get_data(as_text=True)
    for text in ("CONSOLE1", "10.1.2.3", "MRI1", "12", "1.5 MB", "released"):
        assert text in page


def test_the_upload_page_tells_the_receiver_address_and_the_projects_ae_titles(
        app, client, make_project):
    make_project("study1")
    with app.app_context():
        db.session.add_all([Receiver(ae_title="STUDY1AE", project="study1"),
                            Receiver(ae_title="OFFAE", project="study1", enabled=False)])
        db.session.commit()
    page = client.get("/upload").get_data(as_text=True)
    assert "localhost" in page and "8104" in page and "SCANYARD" in page
    assert "STUDY1AE" in page and "OFFAE" not in page
