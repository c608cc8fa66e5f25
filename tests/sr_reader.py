"""Read a fibrosis SR back with plain pydicom, independently of fibrosis.score.sr."""
from __future__ import annotations

from typing import Any


def _name(item: Any) -> tuple[str, str]:
    c = item.ConceptNameCodeSequence[0]
    return c.CodingSchemeDesignator, c.CodeValue


def _value(item: Any) -> Any:
    vt = item.ValueType
    if vt == "NUM":
        return float(item.MeasuredValueSequence[0].NumericValue)
    if vt == "CODE":
        c = item.ConceptCodeSequence[0]
        return c.CodingSchemeDesignator, c.CodeValue
    if vt == "TEXT":
        return str(item.TextValue)
    if vt == "UIDREF":
        return str(item.UID)
    if vt == "IMAGE":
        return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return None


def result(container: Any) -> dict[str, Any]:
    """One result container: probability, decision (True/False/None), threshold name and
    value, finding code and the referenced SOP instance UIDs."""
    out: dict[str, Any] = {"refs": [], "probability": None, "decision": None}
    for item in container.ContentSequence:
        key, val = _name(item), _value(item)
        if key == ("99FIBROSIS", "PROB"):
            out["probability"] = val
        elif key == ("99FIBROSIS", "DECISION"):
            out["decision"] = {("SCT", "52101004"): True, ("SCT", "2667000"): False}[val]
        elif key == ("99FIBROSIS", "OPNAME"):
            out["threshold_name"] = val
        elif key == ("99FIBROSIS", "OPVALUE"):
            out["threshold"] = val
        elif key == ("DCM", "121071"):
            out["finding"] = val
        elif key == ("99FIBROSIS", "REASON"):
            out["reason"] = val
        elif item.ValueType == "IMAGE":
            out["refs"].append(val)
    return out


def read_sr(ds: Any) -> dict[str, Any]:
    """{'texts': {code: text}, 'observer': {...}, 'study': result, 'images': [result], 'not_scored': [result]}"""
    doc: dict[str, Any] = {"texts": {}, "observer": {}, "images": [], "not_scored": [], "study": None}
    for item in ds.ContentSequence:
        key = _name(item)
        if item.RelationshipType == "HAS OBS CONTEXT":
            doc["observer"][key[1]] = _value(item)
        elif item.ValueType == "TEXT":
            doc["texts"][key[1]] = _value(item)
        elif key == ("99FIBROSIS", "STUDY"):
            doc["study"] = result(item)
        elif key == ("99FIBROSIS", "IMAGE"):
            doc["images"].append(result(item))
        elif key == ("99FIBROSIS", "NOTSCORED"):
            doc["not_scored"].append(result(item))
    return doc
